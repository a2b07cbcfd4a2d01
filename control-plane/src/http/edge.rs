//! The edge: what silo does around every request, in one layer and one future.
//!
//! For each request, in order: a request id (the client's `x-request-id` if it sent a
//! short plain one, else a new one, put on the request for the handlers and on the
//! response); a trace span
//! (request id, method, route, and the tenant once the credential names it) entered
//! whenever the handler runs; the handler polled once in place and, if it has to wait,
//! moved to a task of its own so that it runs to completion even if the client hangs up; a
//! panic guard around every poll; errors of the libSQL routes in sqld's shape; the latency
//! histogram of the route; the security headers; and, when asked for, an access-log line.
//!
//! Why one hand-written layer rather than tower-http's and axum's `from_fn`: each of those
//! layers wraps the future of the next and each `from_fn` clones the service inside it and
//! boxes a future on every request. This layer adds no allocation of its own; what it
//! costs against a bare axum route is measured by the point_query bench
//! (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tracing::Span;

use crate::error::ApiError;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The headers every answer carries unless its handler set them: answers hold credentials
/// and tenant data, so nothing caches them, frames them or sniffs their type.
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::CACHE_CONTROL, "no-store"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// The layer, applied with `Router::layer` so that it runs after routing: the route
/// template is known (for the span and the metrics), and the fallback is covered too.
#[derive(Clone, Copy)]
pub(crate) struct EdgeLayer {
    /// Write one INFO line per request (target `silo::access`)? Off by default: see
    /// `--access-log` in the README.
    pub(crate) access_log: bool,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    access_log: bool,
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Future<Output = Result<Response, Infallible>> + Unpin + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = match req.headers().get(REQUEST_ID) {
            Some(id) if is_usable_request_id(id) => id.clone(),
            // None, or one that could not sit in every log line of the request: too long,
            // or more than letters, digits and `-_.:`. Replaced, so handlers and the
            // audit log see the one the answer carries.
            _ => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        // Shared, not copied: a matched path is reference-counted.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let span = request_span(&req, &request_id, route.as_ref());
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let access_span = self.access_log.then(|| span.clone());
        EdgeFuture {
            state: State::Inline(Guarded { future, span }),
            started,
            method,
            route,
            request_id,
            access_span,
        }
    }
}

/// One span per request. `tenant_id` is filled in once the credential names the tenant.
/// The URI's query string is left out: nothing secret belongs there, but if a client puts
/// one there anyway it must not reach the logs.
fn request_span(req: &Request, request_id: &HeaderValue, route: Option<&MatchedPath>) -> Span {
    let route = route.map_or_else(|| req.uri().path(), MatchedPath::as_str);
    // Text recorded as text: the log writer copies it as it is (see `logging`).
    tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or("-"),
        method = req.method().as_str(),
        route,
        tenant_id = tracing::field::Empty,
        admin = tracing::field::Empty,
    )
}

/// Longest client-chosen request id kept (a UUID is 36).
const MAX_CLIENT_REQUEST_ID: usize = 64;

fn is_usable_request_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    !id.is_empty()
        && id.len() <= MAX_CLIENT_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A random prefix drawn once per process, then a counter, in hex: unique and unguessable
/// enough to correlate logs, without a getrandom call (or a formatter) on every request.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    static PREFIX: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(silo_crypto::random_bytes::<8>);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 32];
    for (i, byte) in prefix.iter().chain(&n.to_be_bytes()).enumerate() {
        id[2 * i] = HEX[usize::from(byte >> 4)];
        id[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A handler's future with its request's span entered and a panic guard around each poll:
/// the same wherever it is polled, inline or on its own task.
pub(crate) struct Guarded<F> {
    future: F,
    span: Span,
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.future).poll(cx))) {
            Ok(Poll::Ready(Ok(response))) => Poll::Ready(response),
            Ok(Poll::Ready(Err(never))) => match never {},
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(
                ApiError::internal(anyhow::anyhow!("a handler panicked")).into_response(),
            ),
        }
    }
}

enum State<F> {
    /// Not polled yet: the first poll happens in place, on the connection's task. Most
    /// requests (a cached credential and a quick query) finish then, and spared the task
    /// they are spared a hand-off to the other worker thread and back, which on a busy
    /// server cost more than the handler.
    Inline(Guarded<F>),
    /// The handler had to wait and runs on a task of its own, so a client that hangs up
    /// cannot cut it short between its change and its audit event, or between the steps of
    /// a multi-step operation: the handler finishes, and only the response is lost.
    Spawned(tokio::task::JoinHandle<Response>),
    /// A libSQL route's error being rewritten in sqld's shape (reads the error body).
    Shaping(Pin<Box<dyn Future<Output = Response> + Send>>),
    Done,
}

pub(crate) struct EdgeFuture<F> {
    state: State<F>,
    started: Instant,
    method: Method,
    route: Option<MatchedPath>,
    request_id: HeaderValue,
    /// The request's span, kept for the access-log line when there is one.
    access_span: Option<Span>,
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin + Send + 'static,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let response = match &mut this.state {
                State::Inline(handler) => match Pin::new(handler).poll(cx) {
                    Poll::Ready(response) => response,
                    Poll::Pending => {
                        let State::Inline(handler) =
                            std::mem::replace(&mut this.state, State::Done)
                        else {
                            unreachable!("matched just above")
                        };
                        // The task polls it again at once, registering its own waker.
                        this.state = State::Spawned(tokio::spawn(handler));
                        continue;
                    }
                },
                State::Spawned(task) => match Pin::new(task).poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(e)) => {
                        ApiError::internal(anyhow::anyhow!("handler task: {e}")).into_response()
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Shaping(shaping) => match shaping.as_mut().poll(cx) {
                    Poll::Ready(response) => {
                        this.state = State::Done;
                        return Poll::Ready(Ok(this.finish(response)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Done => {
                    return Poll::Ready(Ok(ApiError::internal(anyhow::anyhow!(
                        "request polled after it was answered"
                    ))
                    .into_response()));
                }
            };
            let route = this.route.as_ref().map(MatchedPath::as_str);
            if !response.status().is_success() && route.is_some_and(super::hrana::is_hrana_route) {
                this.state = State::Shaping(Box::pin(super::hrana::sqld_error_shape(response)));
                continue;
            }
            this.state = State::Done;
            return Poll::Ready(Ok(this.finish(response)));
        }
    }
}

/// The security headers as a ready map, cloned for each answer: a clone is two copies,
/// where inserting each header into the handler's map hashed, probed and grew it (a fifth
/// of a bare request's cost, measured with callgrind).
fn security_headers() -> &'static HeaderMap {
    static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        let mut headers = HeaderMap::with_capacity(SECURITY_HEADERS.len() + 4);
        for (name, value) in SECURITY_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    })
}

/// The security headers and the request id, under the ones the handler set.
fn add_headers(answer: &mut HeaderMap, request_id: &HeaderValue) {
    let mut headers = security_headers().clone();
    headers.insert(REQUEST_ID, request_id.clone());
    headers.extend(std::mem::take(answer));
    *answer = headers;
}

impl<F> EdgeFuture<F> {
    /// What every answer gets on its way out: headers, the latency, the access log.
    fn finish(&self, mut response: Response) -> Response {
        // The handler's own headers go over the defaults: a handler that sets one of them
        // (a download's Cache-Control, say) keeps its value.
        add_headers(response.headers_mut(), &self.request_id);
        let elapsed = self.started.elapsed();
        // Unrouted requests (404 fallback) have no template to file their latency under,
        // and their raw paths are not labels.
        if let Some(route) = &self.route {
            crate::telemetry::record(route.as_str(), &self.method, response.status(), elapsed);
        }
        if let Some(span) = &self.access_span {
            let _entered = span.enter();
            tracing::info!(
                target: "silo::access",
                status = response.status().as_u16(),
                latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "request"
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_header_values_with_one_prefix() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let (a, b) = (a.to_str().expect("ascii"), b.to_str().expect("ascii"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(a[..16], b[..16]);
    }

    #[test]
    fn every_answer_gets_the_security_headers_under_the_handlers_own() {
        let mut answer = HeaderMap::new();
        answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        answer.append(header::VARY, HeaderValue::from_static("origin"));
        answer.append(header::VARY, HeaderValue::from_static("accept"));
        add_headers(&mut answer, &HeaderValue::from_static("req-1"));
        assert_eq!(answer[header::CACHE_CONTROL], "private");
        assert_eq!(answer.get_all(header::VARY).iter().count(), 2);
        assert_eq!(answer[REQUEST_ID], "req-1");
        for (name, value) in &SECURITY_HEADERS {
            if *name != header::CACHE_CONTROL {
                assert_eq!(answer[name], *value, "{name}");
            }
        }
        assert_eq!(answer.len(), SECURITY_HEADERS.len() + 3);
    }

    #[test]
    fn only_short_plain_client_request_ids_are_kept() {
        let ok = |s: &str| is_usable_request_id(&HeaderValue::from_str(s).expect("header"));
        assert!(ok("client-chosen-42"));
        assert!(ok("3f2b8c1e-5d4a-4e7b-9c1d-0a2b3c4d5e6f"));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("a=b"));
        assert!(!ok(&"x".repeat(MAX_CLIENT_REQUEST_ID + 1)));
    }
}
