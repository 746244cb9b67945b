//! `GET|HEAD /images/{id}/{file}`: the immutable, content-addressed artifacts of the image store.
//!
//! Only `vmlinuz`, `initrd.img`, `rootfs.squashfs` and `manifest.json` of an image whose `manifest.json`
//! hashes to its id are served. The ETag is the artifact's sha256 from the manifest (the id for the manifest
//! itself), so it is strong and names the content; responses may be cached forever. The files come from the
//! [`ImageStore`], opened on the blocking pool: it refuses symlinks and any file whose size differs from its
//! manifest entry; this handler maps its refusals to HTTP statuses and error metrics.
//!
//! `GET|HEAD /images/by-root-hash/{root_hash}/rootfs.squashfs` serves the same file of the pinned image whose
//! root filesystem has that dm-verity root hash: the URL a signed UKI's command line carries (its image id
//! cannot be in it: the id hashes the UKI), so the initrd needs no per-machine answer to find its root
//! filesystem, and any other file is refused by dm-verity anyway.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::app_state::AppState;
use super::manifest_cache::ManifestCache;
use super::mapped::{MappedFile, shorter_than_manifest};
use super::mapping_cache::MappingCache;
use super::range::{Decision, decide};
use crate::image::manifest::{self, ManifestError};
use crate::image::store::{self, ImageStore, StoreError};
use crate::netboot::metrics::HttpMetrics;
use crate::netboot::state::Shared;
use crate::status::Source;

/// The files of an image that may be served.
pub const SERVED: &[&str] = &[
    manifest::KERNEL,
    manifest::INITRD,
    manifest::ROOTFS,
    manifest::UKI,
    manifest::MANIFEST,
];

/// The first read of a body larger than [`CHUNK`]: made with the open, so the header leaves with the first
/// 64 KiB.
const FIRST: usize = 64 << 10;
/// The largest read while streaming: reads grow ×4 from [`FIRST`] up to this as the client keeps reading, so a
/// slow client holds at most this much. A body of at most this size (`ipxe.efi`, a boot script's UKI-less
/// files) is read whole with the open: one trip to the blocking pool per request.
const CHUNK: usize = 1 << 20;

/// `Cache-Control` of content-addressed responses: they never change.
pub const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

const ROUTE: &str = "/images/{id}/{file}";

/// The query string of an artifact request.
#[derive(Debug, Deserialize)]
pub struct ArtifactQuery {
    /// The digest the client expects (the boot script puts it in every URL).
    pub sha256: Option<String>,
}

fn is_image_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn refuse(m: &HttpMetrics, kind: &str, status: StatusCode, msg: String) -> Response {
    m.error(kind);
    (status, msg).into_response()
}

fn looks_like_traversal(s: &str) -> bool {
    s.contains("..") || s.contains('/') || s.contains('\\') || s.contains('\0')
}

/// `GET|HEAD /images/by-root-hash/{root_hash}/rootfs.squashfs`: the root filesystem of the pinned image whose
/// dm-verity root hash is `root_hash`, served as [`get_artifact`] serves it; 404 with what to do when no pinned
/// image has it (the image the machine booted was re-pinned since).
pub async fn rootfs_by_root_hash(
    State(st): State<AppState>,
    Path(hash): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    if !is_image_id(&hash) {
        return refuse(
            &st.metrics,
            "not_found",
            StatusCode::NOT_FOUND,
            format!("{hash:?} is not a dm-verity root hash (64 lowercase hex digits)\n"),
        );
    }
    let id = st
        .shared
        .booter()
        .pins
        .values()
        .find(|p| {
            p.rootfs_verity
                .as_ref()
                .is_some_and(|v| v.root_hash == hash)
        })
        .map(|p| p.id.clone());
    let Some(id) = id else {
        return refuse(
            &st.metrics,
            "not_found",
            StatusCode::NOT_FOUND,
            format!(
                "no pinned image has a root filesystem with dm-verity root hash {hash}: the image this machine \
                 booted is no longer pinned; reboot it (it then boots the pinned image) or pin that image again\n"
            ),
        );
    };
    get_artifact(
        State(st),
        Path((id, manifest::ROOTFS.to_string())),
        Query(ArtifactQuery { sha256: None }),
        ConnectInfo(peer),
        method,
        headers,
    )
    .await
}

/// The handler. HEAD is answered by axum from the same response without its body.
pub async fn get_artifact(
    State(st): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    Query(q): Query<ArtifactQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let shared = &st.shared;
    if looks_like_traversal(&id) || looks_like_traversal(&file) {
        tracing::warn!(%peer, %id, %file, "path traversal attempt refused");
        return refuse(
            &st.metrics,
            "traversal",
            StatusCode::NOT_FOUND,
            "not found\n".into(),
        );
    }
    if !is_image_id(&id) {
        return refuse(
            &st.metrics,
            "not_found",
            StatusCode::NOT_FOUND,
            format!("{id:?} is not an image id (64 lowercase hex digits)\n"),
        );
    }
    let Some(&file) = SERVED.iter().find(|f| **f == file) else {
        return refuse(
            &st.metrics,
            "not_found",
            StatusCode::NOT_FOUND,
            format!("images serve only {}\n", SERVED.join(", ")),
        );
    };
    let images = store::open(&shared.cluster());
    let manifests = st.manifests.clone();
    let mappings = st.mappings.clone();
    let h = |n: header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let conds = (
        h(header::IF_NONE_MATCH),
        h(header::RANGE),
        h(header::IF_RANGE),
    );
    let head = method == axum::http::Method::HEAD;
    // One trip to the blocking pool: the manifest (verified once per image, then kept), open, decide, seek to
    // the range's start and read the whole range when it is at most CHUNK, else its first FIRST bytes (which
    // leave with the header). The rest is read as the connection asks for it.
    let opened = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let (f, size, sha) = open_artifact(&*images, &manifests, &id, file)?;
            let decision = decide(
                conds.0.as_deref(),
                conds.1.as_deref(),
                conds.2.as_deref(),
                &format!("\"{sha}\""),
                size,
            );
            let range = match &decision {
                Decision::Full => Some(0..size),
                Decision::Partial(r) => Some(r.clone()),
                _ => None,
            };
            // The reader and its first chunk, when there is a body to send (not HEAD, not an empty range).
            let mut body = None;
            if let Some(r) = range.filter(|r| !head && r.end > r.start) {
                let len = r.end - r.start;
                let n = len.min(if len <= CHUNK as u64 {
                    CHUNK as u64
                } else {
                    FIRST as u64
                }) as usize;
                let (reader, first) = Reader::open(&mappings, f, size, r.start, n);
                let first = first.map_err(|e| {
                    (
                        "io",
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot read {file} of image {id}: {e}"),
                    )
                })?;
                body = Some((reader, first));
            }
            Ok::<_, Refused>((size, sha, decision, body))
        })
        .await
    };
    let (size, sha, decision, body) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err((kind, status, msg))) => {
            if matches!(
                kind,
                "store_damaged" | "symlink" | "digest_refused" | "store_unavailable"
            ) {
                tracing::error!(%peer, image = %id, file, "{msg}");
            }
            return refuse(&st.metrics, kind, status, format!("{msg}\n"));
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Some(want) = &q.sha256
        && *want != sha
    {
        return refuse(
            &st.metrics,
            "digest_mismatch",
            StatusCode::NOT_FOUND,
            format!("image {id} has no {file} with sha256 {want}\n"),
        );
    }
    let etag = format!("\"{sha}\"");
    let mut resp = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, CACHE_FOREVER)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_TYPE,
            if file == manifest::MANIFEST {
                "application/json"
            } else {
                "application/octet-stream"
            },
        );
    let (status, range) = match decision {
        Decision::NotModified => {
            return resp
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("static response");
        }
        Decision::Unsatisfiable => {
            st.metrics.error("range_not_satisfiable");
            return resp
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .expect("static response");
        }
        Decision::Full => (StatusCode::OK, 0..size),
        Decision::Partial(r) => {
            resp = resp.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
    };
    resp = resp.header(header::CONTENT_LENGTH, range.end - range.start);
    if head {
        return resp
            .status(status)
            .body(Body::empty())
            .expect("static response");
    }
    // A full kernel, initrd or UKI sent to a machine of the inventory is a boot event.
    let event = if status == StatusCode::OK {
        let stage = match file {
            manifest::KERNEL => Some("kernel"),
            manifest::INITRD => Some("initrd"),
            // The signed UKI fetched by UEFI HTTP Boot is the machine's boot loader (and kernel and initrd).
            manifest::UKI => Some("bootfile"),
            _ => None,
        };
        stage.and_then(|s| {
            crate::netboot::peers::mac_for_ip(shared, peer.ip()).map(|mac| {
                let via = if s == "bootfile" { " via HTTP" } else { "" };
                (mac, s, format!("{file} of image {id}{via}"))
            })
        })
    } else {
        None
    };
    // HEAD returned above; an empty range needs no reader.
    let Some((reader, first)) = body else {
        return resp
            .status(status)
            .body(Body::empty())
            .expect("valid response");
    };
    let body = stream_body(
        shared.clone(),
        st.metrics.clone(),
        reader,
        range,
        first,
        event,
    );
    // A streamed body has no exact size hint, so the metrics layer leaves its bytes to the stream.
    resp.status(status).body(body).expect("valid response")
}

type Refused = (&'static str, StatusCode, String);

/// Opens one artifact through the store, with the image's manifest verified once and kept in `manifests` (the
/// store still refuses symlinks and a size that differs from the manifest). Returns the reader, its size and its
/// sha256, or the refusal: error kind, status and message.
fn open_artifact(
    images: &dyn ImageStore,
    manifests: &ManifestCache,
    id: &str,
    file: &'static str,
) -> Result<(File, u64, String), Refused> {
    let m = manifests
        .get(images, id)
        .map_err(|e| refusal(e, id, file))?;
    let a = images.open_listed(id, file, &m).map_err(|e| {
        if matches!(e, StoreError::NoImage { .. } | StoreError::NoFile { .. }) {
            // Removed since (gc): read the manifest again at the next request.
            manifests.forget(images, id);
        }
        refusal(e, id, file)
    })?;
    Ok((a.reader, a.size, a.sha256))
}

/// What a refusal of the store means to an HTTP client.
fn refusal(e: StoreError, id: &str, file: &str) -> Refused {
    let nf = |msg| ("not_found", StatusCode::NOT_FOUND, msg);
    match e {
        StoreError::NoImage { .. } | StoreError::Manifest(ManifestError::Read { .. }) => {
            nf(format!("no image {id} in the store"))
        }
        StoreError::NoFile { .. } => nf(format!("image {id} has no {file}")),
        StoreError::BadId { .. } | StoreError::BadName { .. } => nf(e.to_string()),
        StoreError::NotRegular { .. } => ("symlink", StatusCode::NOT_FOUND, e.to_string()),
        StoreError::Manifest(_) | StoreError::SizeMismatch { .. } => (
            "store_damaged",
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        ),
        StoreError::Io { .. } => ("io", StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        // The object store's bytes do not hash to their digest: refused, never served.
        StoreError::DigestMismatch { .. } => {
            ("digest_refused", StatusCode::BAD_GATEWAY, e.to_string())
        }
        StoreError::Remote { .. } | StoreError::Unavailable { .. } => (
            "store_unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

/// Decrements the in-flight gauge when the body is finished or dropped.
struct InFlight(HttpMetrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

struct BodyState {
    shared: Arc<Shared>,
    metrics: HttpMetrics,
    reader: Option<Reader>,
    /// Read with the open, not yet handed out.
    first: Option<Bytes>,
    start: u64,
    pos: u64,
    end: u64,
    event: Option<(crate::config::MacAddr, &'static str, String)>,
    _guard: InFlight,
}

/// Where the chunks after the first come from.
enum Reader {
    /// Chunks are slices of the mapped file: one copy to the socket, no read buffer ([`MappedFile`]).
    Mapped(MappedFile),
    /// The file could not be mapped: chunks are read into the buffer, whose space is reused once the
    /// connection has dropped the chunk cut from it.
    Reading(File, BytesMut),
}

impl Reader {
    /// Maps `file` (`size` bytes; a kept mapping of it when `mappings` has one), or when that fails reads it,
    /// and returns the first chunk: `n` bytes at `start`. Blocks: runs on the blocking pool.
    fn open(
        mappings: &MappingCache,
        mut file: File,
        size: u64,
        start: u64,
        n: usize,
    ) -> (Reader, std::io::Result<Bytes>) {
        match mappings.map(&file, size) {
            Ok(m) => {
                let r = m.chunk(start, n);
                (Reader::Mapped(m), r)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot map an image artifact: reading it");
                let mut buf = BytesMut::new();
                let r = file
                    .seek(SeekFrom::Start(start))
                    .and_then(|_| read_chunk(&mut file, &mut buf, n));
                (Reader::Reading(file, buf), r)
            }
        }
    }

    /// The next `n` bytes, at `pos`. Blocks: runs on the blocking pool.
    fn chunk(&mut self, pos: u64, n: usize) -> std::io::Result<Bytes> {
        match self {
            Reader::Mapped(m) => m.chunk(pos, n),
            // The file's position is `pos`: reads follow the first chunk in order.
            Reader::Reading(file, buf) => read_chunk(file, buf, n),
        }
    }
}

/// Reads exactly `n` bytes at the current position into `buf` and cuts them off as one chunk.
fn read_chunk(f: &mut File, buf: &mut BytesMut, n: usize) -> std::io::Result<Bytes> {
    buf.clear();
    buf.resize(n, 0);
    f.read_exact(&mut buf[..]).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            shorter_than_manifest()
        } else {
            e
        }
    })?;
    Ok(buf.split().freeze())
}

/// Streams `range` of the artifact: `first` (cut with the open; the whole range when it is at most [`CHUNK`]),
/// then chunks from `reader` growing from [`FIRST`] to [`CHUNK`], each made on the blocking pool when the
/// connection asks for it: slices of the mapped file ([`MappedFile`]), or reads when it could not be mapped.
/// Counts bytes; records `event` when the last chunk is handed to the connection.
fn stream_body(
    shared: Arc<Shared>,
    metrics: HttpMetrics,
    reader: Reader,
    range: std::ops::Range<u64>,
    first: Bytes,
    event: Option<(crate::config::MacAddr, &'static str, String)>,
) -> Body {
    metrics.in_flight.inc();
    let st = BodyState {
        _guard: InFlight(metrics.clone()),
        metrics,
        shared,
        reader: Some(reader),
        first: Some(first),
        start: range.start,
        pos: range.start,
        end: range.end,
        event,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.pos >= st.end {
            return None;
        }
        let read = match st.first.take() {
            Some(b) => Ok(b),
            None => {
                let sent = ((st.pos - st.start) * 4).min(CHUNK as u64);
                let n = (st.end - st.pos).min(sent.max(FIRST as u64)) as usize;
                let reader = st.reader.take().expect("reader present while streaming");
                let pos = st.pos;
                match tokio::task::spawn_blocking(move || {
                    let mut reader = reader;
                    let r = reader.chunk(pos, n);
                    (reader, r)
                })
                .await
                {
                    Ok((reader, r)) => {
                        st.reader = Some(reader);
                        r
                    }
                    Err(e) => Err(std::io::Error::other(e)),
                }
            }
        };
        match read {
            Ok(chunk) => {
                let n = chunk.len() as u64;
                st.pos += n;
                st.metrics.bytes(ROUTE, n);
                // hyper stops polling once Content-Length bytes are out: the last chunk is the end.
                if st.pos >= st.end
                    && let Some((mac, stage, detail)) = st.event.take()
                {
                    st.shared.events.record(mac, stage, detail, Source::Server);
                }
                Some((Ok::<Bytes, std::io::Error>(chunk), st))
            }
            Err(e) => {
                st.metrics.error("io");
                tracing::error!(error = %e, "reading an image artifact failed mid-response");
                st.pos = st.end;
                st.event = None;
                Some((Err(e), st))
            }
        }
    });
    Body::from_stream(stream)
}
