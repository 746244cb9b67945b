//! Fuzzing of what the HTTP server parses from the network (compiled for tests and with the `fuzzing` feature
//! only; not part of the library's API). Used by the stable in-suite fuzz tests below and the cargo-fuzz
//! targets `http_range` and `node_forms` in `fuzz/`.
//!
//! - [`run_range`]: arbitrary `Range`, `If-Range` and `If-None-Match` values against arbitrary sizes through
//!   [`range::parse_range`] and [`range::decide`]: a range served always lies inside the file and is not
//!   empty.
//! - [`run_forms`]: arbitrary node requests through the whole application ([`super::app`]) from inventory and
//!   stranger addresses: `POST /api/events` (node reports), `POST /api/token` (token publication) and
//!   `GET /api/enroll/{mac}` (enrollment) with arbitrary bodies and paths. After each: no 5xx but 503, the
//!   history holds only inventory MACs, no detail holds a token or a PEM block, and the log stays within its
//!   bounds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use tower::ServiceExt;

use super::range;
use crate::config::MacAddr;
use crate::netboot::state::Shared;
use crate::status::Events;

/// Range and conditional request invariants on arbitrary input.
pub fn run_range(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let size = match sel % 4 {
        0 => u64::from(sel),
        1 => 1 << (sel % 64),
        2 => u64::MAX - u64::from(sel),
        _ => 0,
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\u{0}');
    let (r, if_range, inm) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    if let Some(Ok(rg)) = range::parse_range(r, size) {
        assert!(
            rg.start < rg.end && rg.end <= size,
            "{r:?} of {size}: {rg:?}"
        );
    }
    let etag = "\"0123456789abcdef\"";
    match range::decide(inm, Some(r), if_range, etag, size) {
        range::Decision::Partial(rg) => {
            assert!(
                rg.start < rg.end && rg.end <= size,
                "{r:?} of {size}: {rg:?}"
            );
        }
        range::Decision::NotModified => assert!(inm.is_some()),
        range::Decision::Full | range::Decision::Unsatisfiable => {}
    }
}

/// The application over the example cluster in a temp directory (secrets made, event log on disk with small
/// limits), and a runtime to drive it.
pub struct FormFixture {
    _dir: tempfile::TempDir,
    shared: Arc<Shared>,
    app: Router,
    rt: tokio::runtime::Runtime,
    inventory: Vec<(MacAddr, IpAddr)>,
    log_cap: u64,
}

/// Builds the fixture (once per fuzzing process: it registers the HTTP metrics).
pub fn form_fixture() -> FormFixture {
    // tmpfs when there is one: the loop fsyncs.
    let dir = tempfile::Builder::new()
        .prefix("imgbuild-fuzz")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = format!(
        "{}\n[paths]\nprofiles = \"{}\"\nipxe = \"{}\"\n",
        include_str!("../../../cluster.toml")
            .replacen("file_bytes = 1048576", "file_bytes = 16384", 1)
            .replacen("files = 4  ", "files = 2  ", 1),
        root.join("profiles").display(),
        root.join("ipxe").display()
    );
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, &src).expect("write the fixture config");
    let cluster = crate::config::load(&config).expect("the fixture config is valid");
    crate::pki::secrets::init(&cluster.paths.secrets).expect("secrets");
    let events = Events::open(
        &cluster.paths.state.join("events.jsonl"),
        &cluster.limits.events,
    )
    .expect("event log");
    let inventory = cluster
        .machines
        .iter()
        .map(|m| (m.mac, IpAddr::V4(m.ip)))
        .collect();
    let log_cap = cluster.limits.events.file_bytes * u64::from(cluster.limits.events.files);
    let shared = Arc::new(Shared::new(config, cluster, Default::default(), events));
    let app = super::app(shared.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    FormFixture {
        _dir: dir,
        shared,
        app,
        rt,
        inventory,
        log_cap,
    }
}

/// One node request from the fuzz bytes: byte 0 picks the route, byte 1 the machine named and the peer
/// (its own address, another machine's, a stranger's), the rest is the body or path.
pub fn run_forms(f: &FormFixture, data: &[u8]) {
    let (Some(&route), Some(&who)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let n = f.inventory.len();
    let (mac, own) = f.inventory[usize::from(who) % n];
    let peer: IpAddr = match who / 64 {
        0 | 1 => own,
        2 => f.inventory[usize::from(who / 3) % n].1,
        _ => IpAddr::from([10, 77, 0, 250]),
    };
    let text = String::from_utf8_lossy(rest);
    let (method, uri, body) = match route % 5 {
        0 => ("POST", "/api/events".to_string(), rest.to_vec()),
        // A well-formed report with arbitrary stage and detail.
        1 => {
            let (stage, detail) = text.split_once('\u{0}').unwrap_or(("failed", &text));
            let mut b = format!("mac={mac}&stage=").into_bytes();
            b.extend(urlencode(stage));
            b.extend(b"&detail=");
            b.extend(urlencode(detail));
            ("POST", "/api/events".to_string(), b)
        }
        2 => ("POST", "/api/token".to_string(), rest.to_vec()),
        3 => (
            "GET",
            format!("/api/enroll/{}", String::from_utf8_lossy(&urlencode(&text))),
            Vec::new(),
        ),
        _ => ("GET", format!("/api/enroll/{mac}"), Vec::new()),
    };
    let Ok(mut req) = Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
    else {
        return;
    };
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(peer, 40_000)));
    let resp =
        f.rt.block_on(f.app.clone().oneshot(req))
            .expect("the router is infallible");
    let status = resp.status().as_u16();
    assert!(
        status < 500 || status == 503,
        "{method} {uri} from {peer}: {status}"
    );
    let events = f.shared.events.snapshot();
    let known: Vec<MacAddr> = f.inventory.iter().map(|(m, _)| *m).collect();
    for ev in &events {
        assert!(known.contains(&ev.mac), "an event for {}", ev.mac);
        assert!(
            !crate::status::fuzzing::has_token(&ev.detail),
            "a token: {ev:?}"
        );
        assert!(!ev.detail.contains("-----BEGIN"), "a PEM block: {ev:?}");
    }
    let s = f.shared.events.stats();
    // The live file may pass its size by one line (a 1 KiB detail escaped as JSON: at most 6 bytes a byte).
    assert!(
        s.bytes <= f.log_cap + 8192,
        "the log outgrew its cap: {s:?}"
    );
}

fn urlencode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend(format!("%{b:02X}").bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
        words[rng.random_range(0..words.len())]
    }

    #[test]
    fn fuzz_range_headers_stay_inside_the_file() {
        let mut rng = StdRng::seed_from_u64(0x7a9e_0001);
        let words = [
            "bytes=",
            "0",
            "-",
            "1",
            "499",
            "18446744073709551615",
            ",",
            " ",
            "=",
            "W/",
            "\"0123456789abcdef\"",
            "*",
            "\u{0}",
            "99999999999999999999",
            "x",
        ];
        for _ in 0..200_000 {
            let mut d = vec![rng.random::<u8>()];
            for _ in 0..rng.random_range(0..10) {
                d.extend(pick(&mut rng, &words).as_bytes());
            }
            run_range(&d);
        }
    }

    #[test]
    fn fuzz_node_forms_through_the_application() {
        let f = form_fixture();
        let mut rng = StdRng::seed_from_u64(0xf0f0_0002);
        let words = [
            "mac=",
            "52:54:00:77:00:21",
            "52:54:00:77:00:11",
            "02:00:00:00:00:01",
            "&stage=",
            "failed",
            "init-done",
            "joined",
            "ipxe-script",
            "&detail=",
            "--token",
            " ",
            "abcdef.0123456789abcdef",
            "-----BEGIN KEY-----",
            "%00",
            "%ZZ",
            "&token=",
            "&expires=",
            "&ts=",
            "&sig=",
            "1",
            "\u{0}",
            "=",
            "&",
        ];
        for _ in 0..3_000 {
            let mut d = vec![rng.random::<u8>(), rng.random::<u8>()];
            for _ in 0..rng.random_range(0..14) {
                d.extend(pick(&mut rng, &words).as_bytes());
            }
            run_forms(&f, &d);
        }
    }
}
