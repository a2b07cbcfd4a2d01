//! The listener: accepts TCP connections and serves HTTP/1.1 on them, with the limits that
//! keep one client (or many idle ones) from taking the node from everyone else.
//!
//! - **Header-read timeout:** a request's head must arrive within `header_read`, so a
//!   slowloris trickling header bytes is cut (within one and a half times the limit: the
//!   connection's one timer checks twice per period).
//! - **Idle timeout:** a connection with no request in flight and no byte read or written
//!   for `idle` is closed, whether it never sent anything, sent half a request line, or is a
//!   keep-alive connection nobody uses.
//! - **Request timeout:** a request that has not answered within `request` (`long_request`
//!   for exports) gets 408 `request_timeout`. A slow upload ends there; a handler keeps
//!   running to completion (the edge layer's promise), only its answer is not waited for.
//!
//! No timer is set per request: a connection's own task keeps one, for the idle and head
//! limits, and a request's timer is armed only if its answer is not ready at its first poll
//! (most are: a cached credential and a quick query). Two timers per request were a tenth
//! of a bare request's cost (docs/benchmarks.md).
//! - **Connection caps:** at most `max_connections` in total and `max_per_address` from one
//!   client address (trusted proxies are exempt from the latter). At a cap, the
//!   longest-idle connection (of that address, for the per-address cap) is closed to make
//!   room; only when every connection is busy is the new one refused, with a 503 JSON
//!   answer written without waiting. Descriptors never run out, so the accept loop, the
//!   catalog and tenant databases keep theirs.
//!
//! On shutdown, accepting stops, idle connections close, and busy ones finish their
//! request first (graceful shutdown); the caller bounds the wait.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// The limits of the listener; `silo serve`'s flags set them (see `config.rs`).
#[derive(Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_read: Duration,
    pub idle: Duration,
    pub request: Duration,
    pub long_request: Duration,
    /// Addresses of reverse proxies: many clients share their address, so the per-address
    /// cap does not apply to them.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve HTTPS with this (see `http::tls`); answers then carry HSTS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Request bodies buffered at once, in KiB, across every connection: a request
    /// reserves its `Content-Length` (or the body limit, when it does not say) before its
    /// body is read, and gets 503 `busy` if the budget cannot hold it.
    pub body_budget_kib: u32,
    /// Answers held at once while they are sent, in KiB: an answer over
    /// [`RESERVED_FROM`] bytes reserves its size when it is ready, and is replaced by 503
    /// `busy` if the budget cannot hold it.
    pub response_budget_kib: u32,
    /// The largest body a request may have (`--max-body-bytes`).
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_connections", &self.max_connections)
            .field("max_per_address", &self.max_per_address)
            .field("idle", &self.idle)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Answers this large or larger reserve their size in the response budget.
const RESERVED_FROM: u64 = 64 * 1024;

/// A connection idle for less than this is not closed to make room: it may be between two
/// requests of a client that is being served.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// The answer to a connection refused at a cap, written without waiting.
const REFUSED: &[u8] = concat!(
    "HTTP/1.1 503 Service Unavailable\r\n",
    "content-type: application/json\r\n",
    "retry-after: 1\r\n",
    "connection: close\r\n",
    "content-length: 101\r\n",
    "\r\n",
    r#"{"error":{"code":"busy","message":"the server has too many connections open; try again in a moment"}}"#,
)
.as_bytes();

/// A clock for activity stamps, in milliseconds: since the process's first connection,
/// plus a day so that "idle for N seconds" never needs a time before the start.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 86_400_000
}

/// Each client address's share of the body budget, in KiB reserved now. One address may
/// hold at most `share_kib` (a sixteenth of the budget, or one largest body if more), so a
/// few clients trickling large uploads cannot take the whole budget from everyone else.
struct BodyShares {
    held: Mutex<HashMap<IpAddr, u32>>,
    share_kib: u32,
}

impl BodyShares {
    fn new(budget_kib: u32, max_body_kib: u32) -> Self {
        BodyShares {
            held: Mutex::new(HashMap::new()),
            share_kib: (budget_kib / 16).max(max_body_kib),
        }
    }

    /// Reserves `kib` for `ip` if its share has room.
    fn take(self: &Arc<Self>, ip: IpAddr, kib: u32) -> Option<BodyShare> {
        let ip = crate::throttle::client_key(ip);
        let mut held = self.held.lock();
        let mine = held.entry(ip).or_default();
        if mine.saturating_add(kib) > self.share_kib {
            if *mine == 0 {
                held.remove(&ip);
            }
            return None;
        }
        *mine += kib;
        Some(BodyShare {
            shares: self.clone(),
            ip,
            kib,
        })
    }
}

/// A reservation of one address's share, given back when dropped.
struct BodyShare {
    shares: Arc<BodyShares>,
    ip: IpAddr,
    kib: u32,
}

impl Drop for BodyShare {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock();
        if let Some(mine) = held.get_mut(&self.ip) {
            *mine = mine.saturating_sub(self.kib);
            if *mine == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// What one connection shares with the registry and its requests.
struct Activity {
    /// Last byte read or written (`now_ms`).
    last_ms: AtomicU64,
    /// When the first byte of a request head not yet complete was read (`now_ms`), or 0.
    /// An answer still streaming out restarts it with each write: a client may send its
    /// next request while the last answer streams (pipelining), and that head waits for
    /// the answer, not for the client.
    head_started_ms: AtomicU64,
    /// Requests whose answer has not been produced yet.
    in_flight: AtomicU32,
    /// Answers produced whose head hyper has not written yet.
    heads_due: AtomicU32,
    /// Why the registry wants it closed: [`EVICTED`], [`DRAINING`], or 0.
    told: AtomicU8,
    /// The server's budget of answers being sent (shared by every connection).
    responses: Arc<ResponseBudget>,
    /// Wakes the connection's task when `told` is set.
    close: Notify,
}

/// Closed to make room at a cap.
const EVICTED: u8 = 1;
/// The server is shutting down: finish the request in flight, take no other.
const DRAINING: u8 = 2;

impl Activity {
    fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    fn tell(&self, why: u8) {
        self.told.fetch_or(why, Ordering::SeqCst);
        self.close.notify_one();
    }

    /// Bytes were read at `now`: with no request in flight they are a new head's.
    fn read_at(&self, now: u64) {
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms.store(now, Ordering::Relaxed);
        }
    }
}

struct Entry {
    ip: IpAddr,
    activity: Arc<Activity>,
    /// Told to close; no longer counted against the caps.
    closing: bool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
    /// Connections counted against the total cap (open and not closing).
    counted: usize,
}

/// Every open connection, for the caps and for draining.
struct Registry {
    /// Buffered request bodies, in KiB (see [`ConnectionLimits::body_budget_kib`]).
    bodies: Arc<tokio::sync::Semaphore>,
    /// Each address's part of `bodies`.
    shares: Arc<BodyShares>,
    /// Answers being sent (see [`ConnectionLimits::response_budget_kib`]).
    responses: Arc<ResponseBudget>,
    limits: ConnectionLimits,
    inner: Mutex<Inner>,
    empty: Notify,
    /// Shutting down: connections admitted from now on are told at once.
    draining: AtomicBool,
}

impl Registry {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.limits.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Admits a connection from `ip`, closing an idle one to make room at a cap; `None`
    /// when every connection that would have to make room is busy.
    fn admit(&self, ip: IpAddr) -> Option<(u64, Arc<Activity>)> {
        let per_address_cap = !self.trusted(ip);
        let mut inner = self.inner.lock();
        if per_address_cap
            && inner.per_address.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_address
            && !Self::evict(&mut inner, |e| e.ip == ip)
        {
            return None;
        }
        if inner.counted >= self.limits.max_connections && !Self::evict(&mut inner, |_| true) {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(now_ms()),
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            heads_due: AtomicU32::new(0),
            told: AtomicU8::new(0),
            responses: self.responses.clone(),
            close: Notify::new(),
        });
        if self.draining.load(Ordering::SeqCst) {
            activity.tell(DRAINING);
        }
        inner.open.insert(
            id,
            Entry {
                ip,
                activity: activity.clone(),
                closing: false,
            },
        );
        *inner.per_address.entry(ip).or_default() += 1;
        inner.counted += 1;
        Some((id, activity))
    }

    /// Tells the longest-idle connection matching `which` to close; false if none is idle.
    fn evict(inner: &mut Inner, which: impl Fn(&Entry) -> bool) -> bool {
        let victim = inner
            .open
            .iter()
            .filter(|(_, e)| !e.closing && !e.activity.busy() && which(e))
            .map(|(id, e)| (*id, e.activity.idle_for()))
            .filter(|(_, idle)| *idle >= EVICTABLE_AFTER)
            .max_by_key(|(_, idle)| *idle)
            .map(|(id, _)| id);
        let Some(id) = victim else {
            return false;
        };
        let Some(entry) = inner.open.get_mut(&id) else {
            return false;
        };
        entry.closing = true;
        entry.activity.tell(EVICTED);
        let ip = entry.ip;
        Self::uncount(inner, ip);
        metrics::counter!("silo_connections_closed_total", "cause" => "make_room").increment(1);
        true
    }

    fn uncount(inner: &mut Inner, ip: IpAddr) {
        inner.counted = inner.counted.saturating_sub(1);
        if let Some(n) = inner.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                inner.per_address.remove(&ip);
            }
        }
    }

    fn release(&self, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.open.remove(&id)
            && !entry.closing
        {
            Self::uncount(&mut inner, entry.ip);
        }
        if inner.open.is_empty() {
            self.empty.notify_waiters();
        }
    }

    fn is_empty(&self) -> bool {
        self.inner.lock().open.is_empty()
    }

    /// Tells every connection, and every one admitted later, to drain.
    fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for entry in self.inner.lock().open.values() {
            entry.activity.tell(DRAINING);
        }
    }
}

/// Serves `router` on `listener` until `stop` completes, then drains: returns once every
/// connection has closed (idle ones at once, busy ones after their request).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(Registry {
        bodies: Arc::new(tokio::sync::Semaphore::new(limits.body_budget_kib as usize)),
        shares: Arc::new(BodyShares::new(
            limits.body_budget_kib,
            kib(limits.max_body_bytes as u64),
        )),
        responses: Arc::new(ResponseBudget::new(limits.response_budget_kib)),
        limits,
        inner: Mutex::new(Inner::default()),
        empty: Notify::new(),
        draining: AtomicBool::new(false),
    });
    tokio::pin!(stop);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): wait a
                    // little instead of spinning; say so at most every 10 s.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, activity)) = registry.admit(addr.ip()) else {
            metrics::counter!("silo_connections_refused_total").increment(1);
            // Best effort, never waiting: a client that cannot take 300 bytes now gets none.
            let _ = stream.try_write(REFUSED);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let registry = registry.clone();
        let router = router.clone();
        tokio::spawn(async move {
            match registry.limits.tls.clone() {
                None => connection(stream, addr, router, &registry, activity).await,
                Some(acceptor) => {
                    // The handshake is part of the head: same time limit.
                    let handshake =
                        tokio::time::timeout(registry.limits.header_read, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            connection(tls, addr, router, &registry, activity).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            registry.release(id);
        });
    }
    drop(listener);
    registry.drain();
    loop {
        let empty = registry.empty.notified();
        if registry.is_empty() {
            return;
        }
        empty.await;
    }
}

/// Serves one connection until the client closes it, it idles out, its head takes too
/// long, it is told to make room, or the server drains.
async fn connection<IO>(
    stream: IO,
    addr: SocketAddr,
    router: Router,
    registry: &Registry,
    activity: Arc<Activity>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &registry.limits;
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        replacing: None,
    });
    let service = Connection {
        bodies: registry.bodies.clone(),
        shares: registry.shares.clone(),
        max_body_kib: kib(registry.limits.max_body_bytes as u64),
        router,
        addr,
        trusted_proxies: limits.trusted_proxies.clone().into(),
        hsts: limits.tls.is_some(),
        activity: activity.clone(),
        request: limits.request,
        long_request: limits.long_request,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The head's time limit is kept by this task (below), not by a timer per request.
        .header_read_timeout(None)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    // One timer for the connection, checking twice per the shorter limit: a head started
    // (or the connection idled) just after a check is caught at the one after next.
    let period = limits.header_read.min(limits.idle) / 2;
    let check = tokio::time::sleep(period);
    tokio::pin!(check);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.close.notified() => {
                let told = activity.told.load(Ordering::SeqCst);
                if told & EVICTED != 0 && !activity.busy() {
                    return;
                }
                if !draining {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = check.as_mut() => {
                if !activity.busy() {
                    let head = activity.head_started_ms.load(Ordering::Relaxed);
                    if head != 0 && now_ms().saturating_sub(head) >= millis(limits.header_read) {
                        metrics::counter!("silo_connections_closed_total", "cause" => "slow_head").increment(1);
                        return;
                    }
                    if activity.idle_for() >= limits.idle {
                        metrics::counter!("silo_connections_closed_total", "cause" => "idle").increment(1);
                        return;
                    }
                }
                check.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The per-connection service: the client's address for extractors, the request count for
/// the idle check, and the request timeout.
#[derive(Clone)]
struct Connection {
    /// The server's budget of buffered request bodies, in KiB.
    bodies: Arc<tokio::sync::Semaphore>,
    shares: Arc<BodyShares>,
    max_body_kib: u32,
    router: Router,
    addr: SocketAddr,
    trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Served over TLS: answers tell browsers to keep to HTTPS.
    hsts: bool,
    activity: Arc<Activity>,
    request: Duration,
    long_request: Duration,
}

/// Counts a request in flight until its answer is produced (dropped with the future).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Bytes as KiB, rounded up, for the body budget's permits.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// The client a request is from: the socket's peer, unless that is a trusted proxy: then
/// the last address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy
/// appends the address it got the request from, so the entries right of the client's were
/// written by proxies we trust, and those left of it by anyone). From an untrusted peer
/// the header changes nothing. Axum's `ConnectInfo` carries the answer to every extractor
/// (audit, sign-in throttles, API keys' allowed addresses).
fn client_address(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Not an address: nothing left of it can be trusted either.
            return peer;
        };
        if !is_trusted(&ip) {
            return SocketAddr::new(ip, 0);
        }
    }
    peer
}

/// Routes whose answer may take long to produce: they build a file first.
fn is_long(path: &str) -> bool {
    path.ends_with("/export")
}

impl hyper::service::Service<hyper::Request<Incoming>> for Connection {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Answering;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        // Reserve the body's memory before anything reads it; nothing to reserve for none.
        let body = match req.headers().get(axum::http::header::CONTENT_LENGTH) {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(self.max_body_kib, |n| kib(n).min(self.max_body_kib)),
            None if req
                .headers()
                .contains_key(axum::http::header::TRANSFER_ENCODING) =>
            {
                self.max_body_kib
            }
            None => 0,
        };
        let client = client_address(self.addr, req.headers(), &self.trusted_proxies);
        let reserved = if body == 0 {
            None
        } else {
            // The address's share first, then the server's budget.
            let share = self.shares.take(client.ip(), body);
            let permit = share
                .as_ref()
                .and_then(|_| self.bodies.clone().try_acquire_many_owned(body).ok());
            match (share, permit) {
                (Some(share), Some(permit)) => Some((share, permit)),
                (share, _) => {
                    let whose = if share.is_none() { "address" } else { "server" };
                    metrics::counter!("silo_request_bodies_refused_total", "budget" => whose)
                        .increment(1);
                    let mut response = ApiError::Busy(if share.is_none() {
                        "this address is sending as many request bodies as it may at once; \
                         retry when one has gone through"
                            .to_owned()
                    } else {
                        "the server is holding as many request bodies as it may right now; \
                         retry in a moment"
                            .to_owned()
                    })
                    .into_response();
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("1"),
                    );
                    // The unread body is not wanted: close after this answer.
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    return Answering {
                        state: AnswerState::Answered(Some(response)),
                        hsts: self.hsts,
                    };
                }
            }
        };
        req.extensions_mut().insert(ConnectInfo(client));
        // The head is in: its clock stops, the request's starts.
        self.activity.head_started_ms.store(0, Ordering::Relaxed);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.activity.clone());
        let limit = if is_long(req.uri().path()) {
            self.long_request
        } else {
            self.request
        };
        Answering {
            state: AnswerState::Running {
                answer: self.router.clone().oneshot(req.map(axum::body::Body::new)),
                deadline: None,
                limit,
                started: tokio::time::Instant::now(),
                _guard: guard,
                _reserved: reserved,
            },
            hsts: self.hsts,
        }
    }
}

/// A request being answered: the router's future, with the request's time limit armed only
/// once the answer has had to wait.
struct Answering {
    state: AnswerState,
    hsts: bool,
}

// Sized by the running request either way (hyper holds one per request); boxing that
// variant would be the allocation this future exists to avoid.
#[allow(clippy::large_enum_variant)]
enum AnswerState {
    Running {
        answer: tower::util::Oneshot<Router, axum::extract::Request>,
        /// Armed at the first poll that had to wait.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
        started: tokio::time::Instant,
        _guard: InFlight,
        _reserved: Option<(BodyShare, tokio::sync::OwnedSemaphorePermit)>,
    },
    Answered(Option<Response>),
}

impl Future for Answering {
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = match &mut this.state {
            AnswerState::Answered(response) => {
                return Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("answer polled twice")).into_response()
                })));
            }
            AnswerState::Running {
                answer,
                deadline,
                limit,
                started,
                _guard,
                ..
            } => match Pin::new(answer).poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => {
                    let deadline = deadline.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(*started + *limit))
                    });
                    if deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The rest of a slow upload is not worth waiting for: close after this.
                    let mut response = ApiError::RequestTimeout(*limit).into_response();
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    // hyper would wait for the unread body; the connection closes once
                    // this answer is out (its task sees the request done).
                    _guard.0.tell(EVICTED);
                    response
                }
            },
        };
        if let AnswerState::Running { _guard, .. } = &this.state {
            _guard.0.heads_due.fetch_add(1, Ordering::Relaxed);
            response = hold_in_budget(response, &_guard.0.responses);
        }
        // Dropping the running state ends the request's in-flight count and body permit.
        this.state = AnswerState::Answered(None);
        if this.hsts {
            response.headers_mut().insert(
                axum::http::header::STRICT_TRANSPORT_SECURITY,
                axum::http::HeaderValue::from_static("max-age=31536000"),
            );
        }
        Poll::Ready(Ok(response))
    }
}

/// A large answer reserves its size in the server's response budget until it has been sent
/// (or dropped); past the budget it is replaced by 503 `busy`, so slow readers of large
/// results cannot make the server hold unbounded memory. The work is done by then, but
/// the memory is what the budget is for.
fn hold_in_budget(response: Response, budget: &ResponseBudget) -> Response {
    use http_body::Body as _;
    let Some(size) = response.body().size_hint().exact() else {
        // Streamed (exports): bounded by their channel.
        return response;
    };
    if size < RESERVED_FROM {
        return response;
    }
    // An answer larger than the whole budget needs all of it (it can still be sent alone).
    let wanted = kib(size).min(budget.total_kib);
    match budget.kib.clone().try_acquire_many_owned(wanted) {
        Ok(permit) => response.map(|body| {
            axum::body::Body::new(Held {
                body,
                pending: axum::body::Bytes::new(),
                _permit: permit,
            })
        }),
        Err(_) => {
            metrics::counter!("silo_responses_refused_total").increment(1);
            let mut busy = ApiError::Busy(
                "the server is holding as many large answers as it may right now; retry in a \
                 moment"
                    .to_owned(),
            )
            .into_response();
            busy.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            busy
        }
    }
}

/// The server's budget of answers being sent, in KiB.
struct ResponseBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl ResponseBudget {
    fn new(total_kib: u32) -> Self {
        ResponseBudget {
            kib: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }
}

/// An answer's body holding its reservation in the response budget. It hands hyper its
/// bytes in [`HELD_CHUNK`] pieces: hyper takes the next piece only when its write buffer
/// has room, so the reservation lasts until about all of the answer is on its way (handed
/// whole, the body would be dropped, and its reservation with it, while hyper still held
/// every byte).
struct Held {
    body: axum::body::Body,
    /// What is left of the current data frame.
    pending: axum::body::Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

const HELD_CHUNK: usize = 64 * 1024;

impl http_body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        }
        let n = this.pending.len().min(HELD_CHUNK);
        Poll::Ready(Some(Ok(http_body::Frame::data(this.pending.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.body.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + pending);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// A socket (or TLS stream) that stamps its connection's activity on every byte moved, and
/// gives hyper's own answers to requests it could not parse a JSON body (see
/// [`protocol_error`]).
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    /// The JSON version of hyper's answer being written, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

/// hyper answers a request it cannot parse (a malformed head: 400; headers past its buffer:
/// 431; a URI too long: 414; another HTTP version: 505) itself, with an empty body, and
/// closes. That answer is recognised as it is written: a whole head alone, status 4xx or
/// 5xx, `connection: close`, `content-length: 0`, while no request is in flight and no
/// answer of silo's is owed its head (each produced answer counts one head, taken off when
/// a write starts with one; a body never starts a write: its first bytes share the head's
/// write, and chunks start with their size). It is replaced by the same status with the
/// contract's JSON error body.
fn protocol_error(activity: &Activity, written: &[u8]) -> Option<Vec<u8>> {
    if activity.heads_due.load(Ordering::Relaxed) > 0
        || activity.busy()
        || !(written.starts_with(b"HTTP/1.1 4") || written.starts_with(b"HTTP/1.1 5"))
        || !written.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let head = std::str::from_utf8(written).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let has = |h: &str| headers.iter().any(|l| l.eq_ignore_ascii_case(h));
    if !has("connection: close") || !has("content-length: 0") {
        return None;
    }
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let (code, message) = match status {
        400 => ("bad_request", "the request is not valid HTTP/1.1"),
        414 => ("uri_too_long", "the request's URI is too long"),
        431 => (
            "headers_too_large",
            "the request's headers are too large; send fewer or shorter headers",
        ),
        505 => ("http_version_not_supported", "use HTTP/1.1"),
        _ => ("bad_request", "the request could not be read"),
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n",
        body.len()
    );
    for line in headers
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("date:"))
    {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    metrics::counter!("silo_protocol_errors_total", "status" => status.to_string()).increment(1);
    Some(answer.into_bytes())
}

impl Activity {
    /// `written` bytes went out: if they began with a head, it was one of silo's.
    fn wrote(&self, first: &[u8], written: usize) {
        if written > 0 {
            let now = now_ms();
            self.last_ms.store(now, Ordering::Relaxed);
            if self.head_started_ms.load(Ordering::Relaxed) != 0 {
                self.head_started_ms.store(now, Ordering::Relaxed);
            }
            if first.starts_with(b"HTTP/1.1 ") {
                let _ = self
                    .heads_due
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> Tracked<IO> {
    /// Writes what is left of a replacement; `Ready(Ok(()))` once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, at)) = &mut self.replacing {
            if *at == bytes.len() {
                self.replacing = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_at(now_ms());
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(answer) = protocol_error(&self.activity, buf)
        {
            self.replacing = Some((answer, 0));
        }
        if self.replacing.is_some() {
            // hyper's bytes count as written once the JSON answer is out.
            return self.poll_replacement(cx).map_ok(|()| buf.len());
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.activity.wrote(buf, n);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper's answers of its own come alone, in one slice; the first slice of any
        // other write is looked at to count silo's heads.
        if self.replacing.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(answer) = protocol_error(&self.activity, first)
            && bufs.iter().filter(|b| !b.is_empty()).count() == 1
        {
            self.replacing = Some((answer, 0));
        }
        if self.replacing.is_some() {
            let total = bufs.iter().map(|b| b.len()).sum();
            return self.poll_replacement(cx).map_ok(|()| total);
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            self.activity.wrote(first, n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_connections: usize, max_per_address: usize) -> Registry {
        Registry {
            bodies: Arc::new(tokio::sync::Semaphore::new(1024)),
            shares: Arc::new(BodyShares::new(1024, 1024)),
            responses: Arc::new(ResponseBudget::new(1024)),
            limits: ConnectionLimits {
                max_connections,
                max_per_address,
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                request: Duration::from_secs(60),
                long_request: Duration::from_secs(600),
                trusted_proxies: vec!["10.0.0.0/8".parse().expect("cidr")],
                tls: None,
                body_budget_kib: 1024,
                response_budget_kib: 1024,
                max_body_bytes: 1024 * 1024,
            },
            inner: Mutex::new(Inner::default()),
            empty: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    fn age(a: &Activity, by: Duration) {
        let ms = u64::try_from(by.as_millis()).expect("ms");
        a.last_ms
            .store(now_ms().saturating_sub(ms), Ordering::Relaxed);
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let headers = |xff: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("x-forwarded-for", xff.parse().expect("header"));
            h
        };
        let proxy: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let stranger: SocketAddr = "203.0.113.9:4000".parse().expect("addr");
        let ip = |a: SocketAddr| a.ip().to_string();
        // A stranger's header is ignored.
        assert_eq!(
            ip(client_address(stranger, &headers("198.51.100.1"), &trusted)),
            "203.0.113.9"
        );
        // Through a trusted proxy: the last untrusted hop, whatever the client prepended.
        assert_eq!(
            ip(client_address(
                proxy,
                &headers("1.1.1.1, 198.51.100.1, 10.0.0.7"),
                &trusted
            )),
            "198.51.100.1"
        );
        // Garbage stops the walk at the proxy; no header: the proxy itself.
        assert_eq!(
            ip(client_address(
                proxy,
                &headers("198.51.100.1, junk"),
                &trusted
            )),
            "10.0.0.5"
        );
        assert_eq!(
            ip(client_address(
                proxy,
                &axum::http::HeaderMap::new(),
                &trusted
            )),
            "10.0.0.5"
        );
        // Nobody trusted: the header never counts.
        assert_eq!(
            ip(client_address(proxy, &headers("198.51.100.1"), &[])),
            "10.0.0.5"
        );
    }

    #[test]
    fn the_refusal_is_well_formed_json() {
        let text = std::str::from_utf8(REFUSED).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(length, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "busy");
    }

    #[test]
    fn at_the_address_cap_the_longest_idle_connection_of_that_address_makes_room() {
        let r = registry(100, 2);
        let ip: IpAddr = "203.0.113.1".parse().expect("ip");
        let (a, first) = r.admit(ip).expect("first");
        let (_, second) = r.admit(ip).expect("second");
        // Both fresh (could be mid-conversation): nobody makes room.
        assert!(r.admit(ip).is_none());
        age(&first, Duration::from_secs(30));
        age(&second, Duration::from_secs(5));
        let (_, _third) = r.admit(ip).expect("room made");
        assert!(
            r.inner.lock().open[&a].closing,
            "the longest idle one closes"
        );
        // Another address is not affected by this one's cap.
        assert!(r.admit("203.0.113.2".parse().expect("ip")).is_some());
    }

    #[test]
    fn busy_connections_are_never_closed_to_make_room() {
        let r = registry(2, 10);
        let (_, a) = r.admit("203.0.113.1".parse().expect("ip")).expect("a");
        let (_, b) = r.admit("203.0.113.2".parse().expect("ip")).expect("b");
        for x in [&a, &b] {
            age(x, Duration::from_secs(30));
            x.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        assert!(r.admit("203.0.113.3".parse().expect("ip")).is_none());
        b.in_flight.fetch_sub(1, Ordering::Relaxed);
        assert!(r.admit("203.0.113.3".parse().expect("ip")).is_some());
    }

    #[test]
    fn trusted_proxies_have_no_address_cap_and_counts_return_on_release() {
        let r = registry(100, 1);
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let ids: Vec<u64> = (0..5)
            .map(|_| r.admit(proxy).expect("proxy connection").0)
            .collect();
        for id in ids {
            r.release(id);
        }
        let inner = r.inner.lock();
        assert_eq!((inner.counted, inner.open.len()), (0, 0));
        assert!(inner.per_address.is_empty());
    }
}
