//! TPM-attested enrollment over HTTPS (docs/attestation.md): the routes a machine with `identity = "tpm"` uses
//! instead of `GET /api/enroll/{mac}`. The checks are `pki::attest` (pure); this file moves bytes, keeps the
//! challenges, logs and counts every answer (`imgbuild_attest_requests_total{outcome}`).
//!
//! 1. `POST /api/attest/{mac}/challenge` — JSON `{ek, ak, ek_cert?}` (base64 `TPM2B_PUBLIC`s, DER): the EK must
//!    be the machine's (pinned, or approved; a first EK waits as pending, 503), the AK a restricted signing key;
//!    the answer is `{id, nonce, credential}`: a MakeCredential file for that EK naming that AK.
//! 2. `POST /api/attest/{mac}/prove` — JSON `{id, proof, quote, signature, event_log}`: the proof shows the TPM
//!    activated the credential (so the AK lives in that TPM); the quote is the AK's, over PCRs 0–7 with the nonce;
//!    the event log replays to it and shows only the pinned image's boot applications. Only then the answer
//!    `{sealed, booted}`: the enrollment bundle encrypted with the credential (`pki::attest::seal`).
//!
//! The EK decisions and the enrollment record go through the shared state (`pki::state_store::documents`, as
//! `GET /api/enroll` and `imgbuild enroll` do), so every replica on etcd decides alike and records once. Each
//! challenge is used once and expires ([`crate::pki::attest::sessions`]); challenges stay in this replica's
//! memory. The listener's limits (connections, body size, timeouts) apply as to every route.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::attest_expected::{ExpectedCache, expected_for};
use super::barrier::barrier_reached;
use super::enroll::RETRY_BARRIER_SECS;
use super::reply::{
    NO_PEER, OutcomeCounter, blocking, count, outcome_counter, peer_of, retry_after, text,
};
use super::tls::via_tls;
use crate::config::{MacAddr, Machine};
use crate::netboot::state::Shared;
use crate::pki::attest::admit::{EkDecision, decide_ek};
use crate::pki::attest::policy::{Evidence, verify};
use crate::pki::attest::public::Public;
use crate::pki::attest::sessions::{Challenge, Missing, Sessions};
use crate::pki::attest::{credential, ek, seal};
use crate::pki::enroll::bundle;
use crate::pki::secrets;
use crate::pki::state_store::documents;
use crate::status::{Source, now_ms};

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    requests: OutcomeCounter,
    sessions: Arc<Mutex<Sessions>>,
    /// Expected boot applications by pinned image id (computed once per image from its bytes).
    expected: ExpectedCache,
}

/// `POST /api/attest/{mac}/challenge`.
#[derive(Debug, Deserialize)]
pub struct ChallengeRequest {
    /// The EK's `TPM2B_PUBLIC` (`tpm2_createek -u`), base64.
    pub ek: String,
    /// The AK's `TPM2B_PUBLIC` (`tpm2_createak -u`), base64.
    pub ak: String,
    /// The EK certificate (DER, NV index 0x1c00002), base64; needed with `[attestation] manufacturer_ca`.
    #[serde(default)]
    pub ek_cert: Option<String>,
}

/// The challenge.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    /// Sent back with the proof.
    pub id: String,
    /// The quote's qualifying data (`tpm2_quote -q`), hex.
    pub nonce: String,
    /// The credential file for `tpm2_activatecredential -i`, base64.
    pub credential: String,
}

/// `POST /api/attest/{mac}/prove`.
#[derive(Debug, Deserialize)]
pub struct ProveRequest {
    /// The challenge id.
    pub id: String,
    /// [`seal::proof`] of the activated credential, hex.
    pub proof: String,
    /// `tpm2_quote -m` (TPMS_ATTEST), base64.
    pub quote: String,
    /// `tpm2_quote -s` (TPMT_SIGNATURE), base64.
    pub signature: String,
    /// The firmware event log, base64.
    pub event_log: String,
}

/// The sealed bundle (first enrollment), or the acceptance of a re-attestation (no secret).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProveAnswer {
    /// The bundle JSON, sealed for `openssl enc -d` with the credential (base64); only at the machine's first
    /// attestation: the bundle goes out once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// What the machine booted (the image files measured into PCR 4).
    pub booted: String,
    /// The image pinned for the machine's role that it was checked against.
    #[serde(default)]
    pub image: String,
    /// A later boot of an enrolled machine attested again: nothing is released.
    #[serde(default)]
    pub reattested: bool,
}

/// The attestation routes (registers their metric family).
pub fn routes(shared: Arc<Shared>) -> Router {
    let requests = outcome_counter(
        &shared,
        "attest_requests",
        "TPM attestation requests by outcome (challenged, served, or why refused)",
    );
    Router::new()
        .route("/api/attest/{mac}/challenge", post(challenge))
        .route("/api/attest/{mac}/prove", post(prove))
        .with_state(Ctx {
            shared,
            requests,
            sessions: Arc::default(),
            expected: Arc::default(),
        })
}

/// The common front of both routes: HTTPS, a MAC of the inventory, the peer address, a JSON body.
async fn front<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    mac: &str,
    req: Request,
) -> Result<(MacAddr, IpAddr, T), Response> {
    if !via_tls(&req) {
        count(&ctx.requests, "plain-http");
        return Err(text(
            StatusCode::FORBIDDEN,
            format!(
                "attestation is served over HTTPS only: {}/api/attest/<mac>/…",
                ctx.shared.cluster().network.https_base()
            ),
        ));
    }
    let Ok(mac) = mac.parse::<MacAddr>() else {
        count(&ctx.requests, "bad-request");
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address such as 52:54:00:12:34:56"),
        ));
    };
    let Some(peer) = peer_of(&req) else {
        return Err(text(StatusCode::INTERNAL_SERVER_ERROR, NO_PEER));
    };
    if ctx.shared.cluster().machine_by_mac(mac).is_none() {
        count(&ctx.requests, "unknown-mac");
        ctx.shared
            .events
            .refused_outside_inventory(mac, "an attestation request");
        return Err(text(
            StatusCode::FORBIDDEN,
            format!("attestation refused: {mac} (from {peer}) is not in the inventory"),
        ));
    }
    match Json::<T>::from_request(req, &()).await {
        Ok(Json(b)) => Ok((mac, peer, b)),
        Err(e) => {
            count(&ctx.requests, "bad-request");
            Err(text(StatusCode::BAD_REQUEST, e.body_text()))
        }
    }
}

async fn challenge(
    State(ctx): State<Ctx>,
    UrlPath(mac): UrlPath<String>,
    req: Request,
) -> Response {
    match front::<ChallengeRequest>(&ctx, &mac, req).await {
        Ok((mac, peer, body)) => {
            blocking("attestation", move || {
                challenge_blocking(&ctx, mac, peer, body)
            })
            .await
        }
        Err(r) => r,
    }
}

async fn prove(State(ctx): State<Ctx>, UrlPath(mac): UrlPath<String>, req: Request) -> Response {
    match front::<ProveRequest>(&ctx, &mac, req).await {
        Ok((mac, peer, body)) => {
            blocking("attestation", move || prove_blocking(&ctx, mac, peer, body)).await
        }
        Err(r) => r,
    }
}

/// A refusal: counted, logged (warnings rate-limited), answered with the reason.
fn refuse(
    ctx: &Ctx,
    outcome: &str,
    status: StatusCode,
    mac: MacAddr,
    peer: IpAddr,
    msg: String,
) -> Response {
    count(&ctx.requests, outcome);
    if let Some(n) = ctx.shared.events.warn_limit().allow("attest-refused") {
        tracing::warn!(%mac, %peer, outcome, suppressed = n, "{msg}");
    }
    text(status, msg)
}

/// A failure on the server's side (the shared state, the secrets, a stored key): counted as `error`, logged, 500.
fn internal(ctx: &Ctx, mac: MacAddr, peer: IpAddr, e: impl std::fmt::Display) -> Response {
    refuse(
        ctx,
        "error",
        StatusCode::INTERNAL_SERVER_ERROR,
        mac,
        peer,
        e.to_string(),
    )
}

fn decode(field: &str, s: &str) -> Result<Vec<u8>, String> {
    B64.decode(s.trim())
        .map_err(|e| format!("{field} is not base64: {e}"))
}

/// Joiners wait for the first master's init-done and a valid token (as `GET /api/enroll` does).
fn not_yet(ctx: &Ctx, m: &Machine) -> Option<Response> {
    let cluster = ctx.shared.cluster();
    if cluster.first_master().map(|f| f.mac) == Some(m.mac) {
        return None;
    }
    if barrier_reached(&ctx.shared, &cluster).is_none() {
        count(&ctx.requests, "wait-barrier");
        return Some(retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not yet: {} attests after the first master has reported init-done; retry",
                    m.hostname
                ),
            ),
            RETRY_BARRIER_SECS,
        ));
    }
    // The token in force (with replicas: the one last published through any of them), as `GET /api/enroll`.
    let expires = documents::token(&*ctx.shared.state, &cluster.paths.secrets)
        .map_or(u64::MAX, |t| t.expires_unix);
    if expires <= now_ms() / 1000 {
        count(&ctx.requests, "token-expired");
        return Some(retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not yet: the stored bootstrap token has expired; retry",
            ),
            60,
        ));
    }
    None
}

fn challenge_blocking(ctx: &Ctx, mac: MacAddr, peer: IpAddr, body: ChallengeRequest) -> Response {
    let cluster = ctx.shared.cluster();
    let Some(m) = cluster.machine_by_mac(mac) else {
        return text(StatusCode::FORBIDDEN, "not in the inventory");
    };
    let bad = |msg: String| refuse(ctx, "malformed", StatusCode::BAD_REQUEST, mac, peer, msg);
    let (ek, ak) = match (decode("ek", &body.ek), decode("ak", &body.ak)) {
        (Ok(e), Ok(a)) => (e, a),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let ek = match Public::from_tpm2b(&ek).and_then(|k| k.check_ek().map(|_| k)) {
        Ok(k) => k,
        Err(e) => return bad(format!("EK: {e}")),
    };
    let ak = match Public::from_tpm2b(&ak).and_then(|k| k.check_ak().map(|_| k)) {
        Ok(k) => k,
        Err(e) => return bad(format!("AK: {e}")),
    };
    let ek_hex = hex::encode(ek.sha256());
    if !cluster.attestation.manufacturer_ca.is_empty() {
        let cas: Vec<Vec<u8>> = cluster
            .attestation
            .manufacturer_ca
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .flat_map(|pem| ek::pem_certificates(&pem))
            .collect();
        let checked = match body.ek_cert.as_deref().map(|c| decode("ek_cert", c)) {
            None => Err(
                "no EK certificate sent; [attestation] manufacturer_ca requires one".to_string(),
            ),
            Some(Err(e)) => Err(e),
            Some(Ok(der)) => ek::check_certificate(&ek, &der, &cas).map_err(|e| e.to_string()),
        };
        if let Err(e) = checked {
            return refuse(
                ctx,
                "ek-certificate",
                StatusCode::FORBIDDEN,
                mac,
                peer,
                format!(
                    "attestation refused for {} ({mac}) from {peer}, EK sha256:{ek_hex}: {e}",
                    m.hostname
                ),
            );
        }
    }
    let now = now_ms();
    // Through the shared state (`[state] backend`): a pending EK, an approval or a refused claimant recorded by
    // one replica is what every replica decides on. With etcd the closure may run more than once.
    let (mut decided, mut enrolled) = (None, false);
    let saved = documents::update_enrollment(&*ctx.shared.state, |st| {
        enrolled = st.enrolled.contains_key(&mac);
        let d = decide_ek(m, st, &ek_hex, peer, now);
        let write = match &d {
            EkDecision::NewPending => true,
            EkDecision::Refused(_) => st.note_refused(mac, peer, now),
            EkDecision::Known | EkDecision::StillPending => false,
        };
        decided = Some(d);
        ((), write)
    });
    match (decided, saved) {
        (Some(EkDecision::Known), Ok(())) => {}
        (Some(d @ (EkDecision::NewPending | EkDecision::StillPending)), Ok(())) => {
            let msg = format!(
                "not yet: {} ({mac}) presented TPM EK sha256:{ek_hex} from {peer}; it waits for `imgbuild enroll \
                 approve {}` (or pin it: ek_sha256 = \"{ek_hex}\")",
                m.hostname, m.hostname
            );
            // Shown on the page and by `imgbuild enroll` until approved; written (and warned) once.
            if d == EkDecision::NewPending {
                tracing::warn!(%mac, %peer, "{msg}");
            }
            count(&ctx.requests, "pending");
            return retry_after(
                text(StatusCode::SERVICE_UNAVAILABLE, msg),
                RETRY_BARRIER_SECS,
            );
        }
        (Some(EkDecision::Refused(r)), saved) => {
            if let Err(e) = saved {
                tracing::error!(%mac, "cannot remember the refused claimant: {e}");
            }
            let msg = r.message(m, peer);
            return refuse(ctx, r.outcome(), StatusCode::FORBIDDEN, mac, peer, msg);
        }
        (_, Err(e)) => return internal(ctx, mac, peer, e),
        (None, Ok(())) => return internal(ctx, mac, peer, "the enrollment state was not read"),
    }
    // A machine already enrolled re-attests (a later boot): no barrier, no token needed, nothing released.
    if !enrolled && let Some(r) = not_yet(ctx, m) {
        return r;
    }
    let secret: [u8; 32] = rand::random();
    let nonce: [u8; 32] = rand::random();
    let id = hex::encode(rand::random::<[u8; 16]>());
    let cred = match credential::make_credential(&ek, &ak.name(), &secret) {
        Ok(c) => c.to_file(),
        Err(e) => return bad(format!("EK: {e}")),
    };
    ctx.sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(Challenge {
            id: id.clone(),
            mac,
            ek: ek.raw.clone(),
            ak: ak.raw.clone(),
            nonce,
            credential: secret,
            at_ms: now,
        });
    count(&ctx.requests, "challenged");
    tracing::info!(%mac, %peer, "attestation challenge for {} (EK sha256:{ek_hex})", m.hostname);
    no_store(
        Json(ChallengeAnswer {
            id,
            nonce: hex::encode(nonce),
            credential: B64.encode(cred),
        })
        .into_response(),
    )
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn prove_blocking(ctx: &Ctx, mac: MacAddr, peer: IpAddr, body: ProveRequest) -> Response {
    let shared = &ctx.shared;
    let cluster = shared.cluster();
    let Some(m) = cluster.machine_by_mac(mac) else {
        return text(StatusCode::FORBIDDEN, "not in the inventory");
    };
    let who = format!("{} ({mac}) from {peer}", m.hostname);
    let taken =
        ctx.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(mac, &body.id, now_ms());
    let ch = match taken {
        Ok(c) => c,
        Err(missing) => {
            let why = match missing {
                Missing::Unknown => "unknown or already used challenge",
                Missing::Expired => "the challenge expired",
            };
            let msg =
                format!("attestation refused for {who}: {why} (stale nonce); ask for a new one");
            return refuse(
                ctx,
                "stale-challenge",
                StatusCode::FORBIDDEN,
                mac,
                peer,
                msg,
            );
        }
    };
    let ek_hex = hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        &ch.ek,
    )));
    if !constant_eq(
        body.proof.trim().as_bytes(),
        seal::proof(&ch.credential).as_bytes(),
    ) {
        let msg = format!(
            "attestation refused for {who}: the credential was not activated — the AK is not in the TPM of EK \
             sha256:{ek_hex}"
        );
        return refuse(ctx, "not-activated", StatusCode::FORBIDDEN, mac, peer, msg);
    }
    let (quote, signature, log) = match (
        decode("quote", &body.quote),
        decode("signature", &body.signature),
        decode("event_log", &body.event_log),
    ) {
        (Ok(q), Ok(s), Ok(l)) => (q, s, l),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return refuse(ctx, "malformed", StatusCode::BAD_REQUEST, mac, peer, e);
        }
    };
    let ak = match Public::from_tpmt(&ch.ak) {
        Ok(a) => a,
        Err(e) => return internal(ctx, mac, peer, e),
    };
    let (expected, image) = match expected_for(&ctx.shared, &ctx.expected, m) {
        Ok(e) => e,
        Err(e) => {
            count(&ctx.requests, "no-image");
            tracing::error!(%mac, "attestation cannot be checked: {e}");
            return retry_after(text(StatusCode::SERVICE_UNAVAILABLE, e), 60);
        }
    };
    let ev = Evidence {
        ak: &ak,
        quote: &quote,
        signature: &signature,
        event_log: &log,
    };
    // Enrolled before this proof: a later boot re-attesting (nothing is released again).
    let again = documents::enrollment(&*shared.state)
        .map(|st| st.enrolled.contains_key(&mac))
        .unwrap_or(false);
    let verified = match verify(&ev, &ch.nonce, &expected) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!(
                "{} refused for {who} (EK sha256:{ek_hex}, pinned image {}): {e}",
                if again {
                    "re-attestation after a reboot"
                } else {
                    "attestation"
                },
                &image[..image.len().min(12)]
            );
            // The machine's own TPM answered (the credential was activated): worth showing on its row.
            shared
                .events
                .record(mac, "failed", msg.clone(), Source::Server);
            return refuse(ctx, e.outcome(), StatusCode::FORBIDDEN, mac, peer, msg);
        }
    };
    if again {
        return reattested(ctx, mac, peer, &ek_hex, verified, image);
    }
    if let Some(r) = not_yet(ctx, m) {
        return r;
    }
    let mut secrets = match secrets::load(&cluster.paths.secrets) {
        Ok(s) => s,
        Err(e) => return internal(ctx, mac, peer, e),
    };
    if let Ok(t) = documents::token(&*shared.state, &cluster.paths.secrets) {
        secrets.token = t; // the token in force (with replicas: the one last published through any of them)
    }
    let now = now_ms();
    // The first attestation records the enrollment (once, across replicas: with etcd a transaction); a later one
    // (a reboot before `joined`) keeps its time, so the report key the bundle carries stays the same. The bundle
    // is sealed before anything is written: a failure consumes nothing.
    let mut sealed = None;
    let saved = documents::update_enrollment(&*shared.state, |st| {
        let first = !st.enrolled.contains_key(&mac);
        let at_ms = st.enrolled.get(&mac).map_or(now, |e| e.at_ms);
        let b = bundle(&cluster, &secrets, m, at_ms);
        let s = serde_json::to_vec(&b)
            .map_err(|e| e.to_string())
            .and_then(|j| seal::seal(&ch.credential, &j).map_err(|e| e.to_string()));
        let write = first && s.is_ok();
        if write {
            st.record_enrolled(&cluster, m, peer, now);
        }
        sealed = Some(s.map(|s| (s, first)));
        ((), write)
    });
    let (sealed, first) = match (sealed, saved) {
        (Some(Ok(s)), Ok(())) => s,
        (Some(Err(e)), _) => return internal(ctx, mac, peer, e),
        (_, Err(e)) => return internal(ctx, mac, peer, e),
        (None, Ok(())) => return internal(ctx, mac, peer, "the enrollment state was not read"),
    };
    if !first {
        // Enrolled meanwhile (a concurrent attestation): the bundle went out once.
        return reattested(ctx, mac, peer, &ek_hex, verified, image);
    }
    let detail = format!(
        "attested by TPM (EK sha256:{}…): booted {} of image={image}, Secure Boot {}, TPM resets {}; sealed \
         bundle served (once){}",
        &ek_hex[..16],
        verified.booted,
        if verified.secure_boot { "on" } else { "off" },
        verified.reset_count,
        unquoted_note(&verified),
    );
    tracing::info!(%mac, %peer, "{detail}");
    count(&ctx.requests, "served");
    shared
        .events
        .record(mac, "enrolled", detail, Source::Server);
    let (sealed, booted) = (Some(B64.encode(sealed)), verified.booted);
    let reattested = false;
    no_store(
        Json(ProveAnswer {
            sealed,
            booted,
            image,
            reattested,
        })
        .into_response(),
    )
}

/// A later boot of an enrolled machine proved its TPM and the boot of the image pinned now: recorded on its row,
/// and nothing released (the bundle went out once, at enrollment; the node keeps it on its state disk).
fn reattested(
    ctx: &Ctx,
    mac: MacAddr,
    peer: IpAddr,
    ek_hex: &str,
    verified: crate::pki::attest::policy::Verified,
    image: String,
) -> Response {
    let detail = format!(
        "re-attested by TPM (EK sha256:{}…) after a reboot: booted {} of image={image}, Secure Boot {}, TPM \
         resets {}; no secret released (the bundle went out once){}",
        &ek_hex[..16],
        verified.booted,
        if verified.secure_boot { "on" } else { "off" },
        verified.reset_count,
        unquoted_note(&verified),
    );
    tracing::info!(%mac, %peer, "{detail}");
    count(&ctx.requests, "reattested");
    ctx.shared
        .events
        .record(mac, "enrolled", detail, Source::Server);
    let (booted, reattested) = (verified.booted, true);
    no_store(
        Json(ProveAnswer {
            sealed: None,
            booted,
            image,
            reattested,
        })
        .into_response(),
    )
}

/// What the log measured outside the quoted PCRs (the kernel's EFI stub's PCR 9 events on the iPXE path), shown
/// on the machine's row as such: the quote does not cover it, so nothing is concluded from it.
fn unquoted_note(v: &crate::pki::attest::policy::Verified) -> String {
    if v.unquoted.is_empty() {
        return String::new();
    }
    format!(
        "; measured outside the quote (not checked): {}",
        v.unquoted.join(", ")
    )
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
