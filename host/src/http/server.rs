//! The HTTP server around the warp routes: accepts connections (TLS when the web config has
//! `tls_server_config`), serves HTTP/1.1 through hyper, and puts in front of every route
//! what node_exporter users expect of an exporter on the network:
//!
//! - a per-client rate limit (429, `Retry-After`, counted in
//!   `<prefix>_http_server_rate_limited_total`), checked first so that guessing passwords
//!   is throttled too;
//! - basic auth (401 with `WWW-Authenticate: Basic`) when the web config has users; a
//!   request carrying the configured bearer token passes too, as the mutating endpoints
//!   take that token in the same `Authorization` header;
//! - a request body limit (413 on a larger `Content-Length`; chunked bodies are cut at the
//!   limit), below which routes keep their own smaller limits;
//! - a header read timeout against slowloris clients, counted from the connection's accept
//!   or the first byte of a request, and an idle timeout for keep-alive connections between
//!   requests (`<prefix>_http_server_connections_closed_total{reason}`).
//!
//! Rejected requests are counted in `<prefix>_http_server_requests_total` like the others.
//! Graceful shutdown: the listener closes, connections finish their requests (at most
//! [`SHUTDOWN_GRACE`]; live `/events/watch` streams do not end by themselves).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warp::http::{HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

use super::basic_auth::constant_time_eq;
use super::rate_limit::RateLimiter;
use super::requests::HttpMetrics;
use super::web_config::WebSecurity;

/// How long shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The peer's address, put into each request for the routes (`warp::addr::remote` only
/// works under warp's own server).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client's address, for routes: what `warp::addr::remote()` gives under warp's own
/// server.
pub fn client_addr()
-> impl warp::Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    use warp::Filter as _;
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| addr.map(|a| a.0))
}

/// The limits of `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub rate_per_second: u64,
    pub rate_burst: u64,
}

impl Limits {
    pub fn of(config: &crate::config::HttpConfig) -> Self {
        Self {
            max_body_bytes: config.max_request_body_kib * 1024,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            rate_per_second: config.rate_limit_per_second,
            rate_burst: config.rate_limit_burst,
        }
    }
}

/// What every connection shares.
struct Gate {
    security: WebSecurity,
    bearer_token: Option<crate::config::Secret>,
    limits: Limits,
    rate: RateLimiter,
    metrics: HttpMetrics,
}

/// Serves `service` (the warp routes) on `listener` until `shutdown` resolves.
pub async fn run<S>(
    listener: tokio::net::TcpListener,
    service: S,
    security: WebSecurity,
    bearer_token: Option<crate::config::Secret>,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<
            Request<http_body_util::Limited<Incoming>>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = security.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let gate = Arc::new(Gate {
        rate: RateLimiter::new(limits.rate_per_second, limits.rate_burst),
        security,
        bearer_token,
        limits,
        metrics,
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors, usually: give the connections time to close.
                    tracing::warn!(error = %err, "HTTP API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let gate = gate.clone();
        let service = service.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let accepted_at = Instant::now();
            match acceptor {
                None => connection(tcp, remote, gate, service, watcher, accepted_at).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(gate.limits.header_read_timeout, acceptor.accept(tcp))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            connection(tls, remote, gate, service, watcher, accepted_at).await;
                        }
                        Ok(Err(err)) => {
                            gate.metrics.tls_handshake_errors.inc();
                            tracing::debug!(%remote, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            gate.metrics.tls_handshake_errors.inc();
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open after the shutdown grace period; closing them");
    }
}

async fn connection<IO, S>(
    io: IO,
    remote: SocketAddr,
    gate: Arc<Gate>,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    accepted_at: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<
            Request<http_body_util::Limited<Incoming>>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new(accepted_at));
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    let routes = TowerToHyperService::new(service);
    let service = {
        let activity = activity.clone();
        let gate = gate.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = activity.begin();
            let gate = gate.clone();
            let routes = routes.clone();
            async move {
                let response = handle(request, remote, &gate, routes).await;
                Ok::<_, Infallible>(response.map(|body| GuardedBody {
                    inner: Box::pin(body),
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    loop {
        let wait = match activity.deadline(gate.limits) {
            Ok(wait) => wait,
            Err(reason) => {
                // Dropping the connection closes the socket; no request is in flight.
                gate.metrics.connection_closed(reason);
                tracing::debug!(%remote, reason, "HTTP connection closed");
                return;
            }
        };
        tokio::select! {
            result = &mut conn => {
                if let Err(err) = result {
                    tracing::debug!(%remote, error = %err, "HTTP connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The checks in front of the routes.
async fn handle<S>(
    mut request: Request<Incoming>,
    remote: SocketAddr,
    gate: &Gate,
    routes: TowerToHyperService<S>,
) -> Response
where
    S: tower_service::Service<
            Request<http_body_util::Limited<Incoming>>,
            Response = Response,
            Error = Infallible,
        > + Clone,
{
    let started = Instant::now();
    let refused = |status: StatusCode, code: &str, message: &str| {
        gate.metrics.observe(
            request.uri().path(),
            request.method().as_str(),
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        super::error_reply(status, code, message)
    };
    if let Err(wait) = gate.rate.take(remote.ip()) {
        gate.metrics.rate_limited.inc();
        let mut response = refused(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; see [http] rate_limit_per_second",
        );
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    if let Some(auth) = &gate.security.basic_auth {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let bearer = gate.bearer_token.as_ref().is_some_and(|token| {
            authorization
                .and_then(|a| a.strip_prefix(b"Bearer "))
                .is_some_and(|p| constant_time_eq(p, token.expose().as_bytes()))
        });
        if !bearer && !auth.check(authorization).await {
            let mut response = refused(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "basic auth required: a user of the web config's basic_auth_users",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            return response;
        }
    }
    let max = gate.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body over {max} bytes; see [http] max_request_body_kib"),
        );
    }
    request.extensions_mut().insert(ClientAddr(remote));
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let request = request.map(|body| http_body_util::Limited::new(body, limit));
    match hyper::service::Service::call(&routes, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// What the watchdog needs to know about a connection: requests in flight, and when it
/// started waiting for the next request head and its first byte.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection became idle (accept, or a response
    /// finished).
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the first byte read while idle; 0 for none.
    first_byte: AtomicU64,
    /// Whether a request was ever served: before that, the header timeout counts from
    /// the accept.
    served: AtomicBool,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.first_byte.load(Ordering::Acquire) == 0
        {
            self.first_byte.store(self.now_ms() + 1, Ordering::Release);
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.first_byte.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// How long the connection may stay as it is, or why it must close now.
    fn deadline(&self, limits: Limits) -> Result<Duration, &'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(limits.idle_timeout);
        }
        let now = self.now_ms();
        let first_byte = self.first_byte.load(Ordering::Acquire);
        let (since, timeout, reason) = if first_byte != 0 {
            (first_byte - 1, limits.header_read_timeout, "header_timeout")
        } else if !self.served.load(Ordering::Acquire) {
            (0, limits.header_read_timeout, "header_timeout")
        } else {
            (
                self.idle_since.load(Ordering::Acquire),
                limits.idle_timeout,
                "idle_timeout",
            )
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let elapsed = now.saturating_sub(since);
        if elapsed >= timeout_ms {
            Err(reason)
        } else {
            // Re-check early enough to notice a first byte after a long idle wait.
            Ok(Duration::from_millis(timeout_ms - elapsed).min(limits.header_read_timeout))
        }
    }
}

/// A request in flight until its response body is done (dropped by hyper).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Release);
        activity.first_byte.store(0, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`].
struct GuardedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body<Data = Bytes>> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's IO, noting reads for the watchdog.
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
