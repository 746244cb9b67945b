//! The limits of every HTTP listener (`[limits.http]`): global and per-address connection caps, and header,
//! idle, body and write timeouts, each counted in a metric.
//!
//! It is transport-neutral, so the plain listener and a TLS one share it:
//! - [`accept_loop`] accepts TCP connections, refuses the ones over a cap (accepted and closed at once, so the
//!   kernel's backlog never fills for other clients) and hands each admitted one, wrapped in a [`Limited`]
//!   stream that keeps the idle and write timeouts, to a serve closure;
//! - [`serve_http`] serves an axum app over any such stream (a [`Limited`] TCP stream, or a TLS stream around
//!   one) with the header timeout, and the body timeout and size cap on every request body.
//!
//! A TLS listener calls `accept_loop(listener, limiter, None, |io, peer| async move { let tls =
//! acceptor.accept(io).await?; serve_http(tls, peer, app, limiter).await })`: the handshake then runs under the
//! idle timeout and the caps count TLS connections with the plain ones (one [`Limiter`] per process).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

use crate::config::HttpLimits;

/// Label `reason` of `http_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `max_connections`, `max_connections_per_address`, `header_timeout`, `idle_timeout`, `write_timeout`,
    /// `body_timeout` or `max_body_bytes`.
    pub reason: String,
}

/// The listener's metric families.
#[derive(Clone, Default)]
pub struct ListenerMetrics {
    /// Connections open now (admitted, not yet closed).
    pub open: Gauge,
    /// Connections admitted since start.
    pub accepted: Counter,
    /// Connections refused or closed by a limit, by the limit's name.
    pub refused: Family<Reason, Counter>,
}

impl ListenerMetrics {
    /// Builds the families and registers them in `r` (through `Shared::register_metrics`); call once.
    pub fn register(r: &mut Registry) -> Self {
        let m = ListenerMetrics::default();
        r.register(
            "http_connections_open",
            "HTTP connections open now",
            m.open.clone(),
        );
        r.register(
            "http_connections_accepted",
            "HTTP connections admitted",
            m.accepted.clone(),
        );
        r.register(
            "http_refused",
            "HTTP connections or requests refused or closed by a [limits.http] limit, by limit",
            m.refused.clone(),
        );
        m
    }

    /// Counts one hit of limit `reason`.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }
}

/// The connection caps, shared by every listener of the process. The limits are read through a closure, so a
/// reloaded `cluster.toml` applies to the next connection.
pub struct Limiter {
    limits: Box<dyn Fn() -> HttpLimits + Send + Sync>,
    /// Open connections in total and per address.
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
    /// The metric families.
    pub metrics: ListenerMetrics,
}

/// An admitted connection's place under the caps; given back on drop.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    /// A limiter reading its limits from `limits` (called once per connection).
    pub fn new(
        metrics: ListenerMetrics,
        limits: impl Fn() -> HttpLimits + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Limiter {
            limits: Box::new(limits),
            open: Mutex::new((0, HashMap::new())),
            metrics,
        })
    }

    /// The limits now.
    pub fn limits(&self) -> HttpLimits {
        (self.limits)()
    }

    /// A place for one more connection from `ip`, or the name of the cap that refuses it (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, &'static str> {
        let l = self.limits();
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let refused = if open.0 >= l.max_connections {
            Some("max_connections")
        } else if open.1.get(&ip).copied().unwrap_or(0) >= l.max_connections_per_address {
            Some("max_connections_per_address")
        } else {
            None
        };
        if let Some(r) = refused {
            drop(open);
            self.metrics.refuse(r);
            return Err(r);
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        drop(open);
        self.metrics.open.inc();
        self.metrics.accepted.inc();
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now in total and from `ip`.
    pub fn open(&self, ip: IpAddr) -> (u32, u32) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        (open.0, open.1.get(&ip.to_canonical()).copied().unwrap_or(0))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        drop(open);
        self.limiter.metrics.open.dec();
    }
}

/// A stream under the idle timeout (no byte moved either way) and the write timeout (one write making no
/// progress); holds the connection's [`Permit`]. A timeout is an `io::ErrorKind::TimedOut` error, counted.
pub struct Limited<S> {
    inner: S,
    idle: Duration,
    write: Duration,
    /// When a byte last moved.
    last: Instant,
    /// Since when the current write has been waiting, if it is.
    write_waiting: Option<Instant>,
    /// The one timer, armed for whichever deadline is being waited on; re-armed lazily when it fires early.
    timer: Pin<Box<Sleep>>,
    metrics: ListenerMetrics,
    _permit: Permit,
}

impl<S> Limited<S> {
    /// Wraps `inner` under `limits`, holding `permit` until dropped.
    pub fn new(inner: S, limits: &HttpLimits, permit: Permit) -> Self {
        let now = Instant::now();
        Limited {
            inner,
            idle: limits.idle_timeout,
            write: limits.write_timeout,
            last: now,
            write_waiting: None,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            metrics: permit.limiter.metrics.clone(),
            _permit: permit,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Waits on `deadline` with the shared timer: `Ready` once it has passed (counted under `reason`).
    fn expired(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Instant,
        reason: &str,
    ) -> Poll<io::Error> {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        self.metrics.refuse(reason);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("HTTP connection closed: {reason} ([limits.http])"),
        ))
    }

    fn progressed(&mut self) {
        self.last = Instant::now();
    }

    /// After a write returned `Pending`: the error once the write or idle deadline has passed.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = *self.write_waiting.get_or_insert_with(Instant::now);
        let (w, i) = (since + self.write, self.last + self.idle);
        if w <= i {
            self.expired(cx, w, "write_timeout")
        } else {
            self.expired(cx, i, "idle_timeout")
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() != before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                // While a write is waiting, the write path owns the timer.
                if self.write_waiting.is_some() {
                    return Poll::Pending;
                }
                let deadline = self.last + self.idle;
                self.expired(cx, deadline, "idle_timeout").map(Err)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.write_waiting = None;
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.write_waiting = None;
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` forever: one over a cap is counted, sent `refusal` if given (best effort,
/// never waiting) and closed; each admitted one is handed to `serve` as a [`Limited`] stream with its peer.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limiter: Arc<Limiter>,
    refusal: Option<&'static [u8]>,
    serve: F,
) -> io::Result<()>
where
    F: Fn(Limited<tokio::net::TcpStream>, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: say so, back off a little, keep serving.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limiter.admit(peer.ip()) {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                let io = Limited::new(stream, &limiter.limits(), permit);
                tokio::spawn(serve(io, peer));
            }
            Err(reason) => {
                tracing::debug!(%peer, reason, "HTTP connection refused by [limits.http]");
                if let Some(msg) = refusal {
                    let _ = stream.try_write(msg);
                }
            }
        }
    }
}

/// What the plain listener sends a refused connection before closing it.
pub const REFUSAL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 56\r\n\r\ntoo many connections from this address or in total; retry\n";

/// Serves `app` over one connection (HTTP/1.1) with `peer` as `ConnectInfo`, under the header timeout and the
/// body timeout and size cap. Header names are sent in Title-Case (`Content-Length`): GRUB 2.06's HTTP client
/// matches them case-sensitively and, not finding the length, waits for a close that keep-alive never sends.
pub async fn serve_http<I>(io: I, peer: SocketAddr, app: Router, limiter: Arc<Limiter>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    let limits = limiter.limits();
    let metrics = limiter.metrics.clone();
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let m = metrics.clone();
        // A declared length over the cap is answered before the app sees it; a chunked body is cut off at it.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let too_large = declared.is_some_and(|n| n > limits.max_body_bytes);
        let req = req.map(|b| axum::body::Body::new(bounded_body(b, &limits, m.clone())));
        let app = app.clone();
        async move {
            if too_large {
                m.refuse("max_body_bytes");
                return Ok(too_large_response(limits.max_body_bytes));
            }
            app.oneshot(req).await
        }
    });
    let io = hyper_util::rt::TokioIo::new(io);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, svc)
        .await
    {
        if e.is_timeout() {
            limiter.metrics.refuse("header_timeout");
        }
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// 413 for a request whose declared body is over `max` bytes; the connection closes after it.
fn too_large_response(max: u64) -> axum::response::Response {
    let mut r = axum::response::IntoResponse::into_response((
        http::StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {max} bytes ([limits.http] max_body_bytes)\n"),
    ));
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

/// A request body cut off after `body_timeout` or `max_body_bytes` (each counted once). Over the size, the
/// error is `http_body_util`'s length error, which axum's extractors answer with 413.
fn bounded_body(
    body: hyper::body::Incoming,
    limits: &HttpLimits,
    metrics: ListenerMetrics,
) -> impl HttpBody<Data = Bytes, Error = axum::BoxError> + Send + 'static {
    let limited = http_body_util::Limited::new(body, limits.max_body_bytes as usize);
    TimedBody {
        inner: limited,
        timer: Box::pin(tokio::time::sleep(limits.body_timeout)),
        metrics,
    }
}

/// A body whose frames must all arrive before `timer` fires.
struct TimedBody<B> {
    inner: B,
    timer: Pin<Box<Sleep>>,
    metrics: ListenerMetrics,
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes, Error = axum::BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if e.is::<http_body_util::LengthLimitError>() {
                    self.metrics.refuse("max_body_bytes");
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(x) => Poll::Ready(x),
            Poll::Pending => {
                ready!(self.timer.as_mut().poll(cx));
                self.metrics.refuse("body_timeout");
                Poll::Ready(Some(Err(
                    "request body not received within [limits.http] body_timeout".into(),
                )))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft descriptor limit towards the hard one so that `max_connections` connections (plus room for
/// the files being served and the other protocols) cannot run the process out of descriptors; warns if the hard
/// limit is too low for that.
pub fn ensure_descriptors(limits: &HttpLimits) {
    let want = u64::from(limits.max_connections) * 2 + 256;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 || r.rlim_cur >= want {
        return;
    }
    let new = libc::rlimit {
        rlim_cur: want.min(r.rlim_max),
        rlim_max: r.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 || new.rlim_cur < want {
        tracing::warn!(
            soft = new.rlim_cur,
            wanted = want,
            "the descriptor limit is below what [limits.http] max_connections needs; \
             raise it (LimitNOFILE= in the unit, ulimit -n) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn limiter(per_address: u32, total: u32) -> Arc<Limiter> {
        Limiter::new(ListenerMetrics::default(), move || HttpLimits {
            max_connections: total,
            max_connections_per_address: per_address,
            idle_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        })
    }

    fn count(l: &Limiter, reason: &str) -> u64 {
        l.metrics
            .refused
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .get()
    }

    #[test]
    fn caps_per_address_and_total_and_places_given_back() {
        let l = limiter(2, 3);
        let (a, b, c) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "::ffff:10.0.0.3".parse().unwrap(),
        );
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some("max_connections_per_address"));
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(c).err(), Some("max_connections"));
        drop(p1);
        assert_eq!(l.open(a), (2, 1));
        let _p4 = l.admit(c).unwrap();
        assert_eq!(l.open("10.0.0.3".parse().unwrap()), (3, 1));
        assert_eq!(l.metrics.open.get(), 3);
        assert_eq!(count(&l, "max_connections"), 1);
        assert_eq!(count(&l, "max_connections_per_address"), 1);
    }

    #[tokio::test]
    async fn idle_and_write_timeouts_close_and_count() {
        let l = limiter(8, 8);
        let ip = "10.0.0.1".parse().unwrap();
        // Idle: bytes keep the connection alive past the idle timeout (300 ms); silence ends it.
        let (server, mut client) = tokio::io::duplex(64);
        let mut s = Limited::new(server, &l.limits(), l.admit(ip).unwrap());
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        }
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(count(&l, "idle_timeout"), 1);
        drop(s);
        assert_eq!(l.open(ip), (0, 0));
        // Write: a client that does not read fills the pipe; the write fails (after 200 ms).
        let (server, _client) = tokio::io::duplex(64);
        let mut s = Limited::new(server, &l.limits(), l.admit(ip).unwrap());
        let e = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(count(&l, "write_timeout"), 1);
    }
}
