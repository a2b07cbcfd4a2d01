//! The HTTP API: routes, and the middleware every request passes through.
//!
//! Order, outermost first: request id → trace span (request id, method, route, tenant id)
//! → panic guard → security headers → body limit → route.

pub mod admin;
pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod data;
pub mod export;
pub(crate) mod extract;
pub(crate) mod hrana;
pub(crate) mod members;
pub(crate) mod ops;
pub(crate) mod sessions;
pub(crate) mod tenant;
pub(crate) mod two_factor;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API as a router, for the server and for in-process tests.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    let api = Router::new()
        .route("/healthz", get(ops::handle_healthz))
        .route("/readyz", get(ops::handle_readyz))
        .route("/v1/signup", post(sessions::handle_signup))
        .route("/v1/auth/login", post(sessions::handle_login))
        .route("/v1/auth/refresh", post(sessions::handle_refresh))
        .route("/v1/auth/logout", post(sessions::handle_logout))
        .route("/v1/auth/password", post(sessions::handle_password_change))
        .route(
            "/v1/auth/sign-out-everywhere",
            post(sessions::handle_sign_out_everywhere),
        )
        .route("/v1/auth/2fa/enroll", post(two_factor::handle_2fa_enroll))
        .route("/v1/auth/2fa/confirm", post(two_factor::handle_2fa_confirm))
        .route("/v1/auth/2fa/verify", post(two_factor::handle_2fa_verify))
        .route("/v1/auth/2fa", delete(two_factor::handle_2fa_remove))
        .route("/v1/me", get(sessions::handle_me))
        .route(
            "/v1/tenant",
            get(tenant::handle_tenant_get).delete(tenant::handle_tenant_delete),
        )
        .route(
            "/v1/deletion-certificate",
            post(tenant::handle_deletion_certificate),
        )
        .route(
            "/admin/v1/tenants/{id}/restore",
            post(admin::handle_admin_tenant_restore),
        )
        .route(
            "/admin/v1/tenants/{id}/export",
            get(export::handle_admin_export),
        )
        .route("/v1/tenant/settings", patch(tenant::handle_tenant_settings))
        .route("/v1/security-events", get(tenant::handle_security_events))
        .route("/v1/members", get(members::handle_members_list))
        .route(
            "/v1/members/{user_id}",
            patch(members::handle_member_update).delete(members::handle_member_remove),
        )
        .route("/v1/invites", post(members::handle_invite_create))
        .route("/v1/invites/accept", post(members::handle_invite_accept))
        .route(
            "/v1/api-keys",
            post(api_keys::handle_api_key_create).get(api_keys::handle_api_key_list),
        )
        .route("/v1/api-keys/{id}", delete(api_keys::handle_api_key_revoke))
        .route(
            "/admin/v1/tenants",
            get(admin::handle_admin_tenants_list).post(admin::handle_admin_tenant_create),
        )
        .route(
            "/admin/v1/tenants/{id}",
            get(admin::handle_admin_tenant_show).delete(admin::handle_admin_tenant_delete),
        )
        .route(
            "/admin/v1/tenants/{id}/suspend",
            post(admin::handle_admin_tenant_suspend),
        )
        .route(
            "/admin/v1/tenants/{id}/resume",
            post(admin::handle_admin_tenant_resume),
        )
        .route(
            "/admin/v1/tenants/{id}/rotate-db-token",
            post(admin::handle_admin_tenant_rotate),
        )
        .route(
            "/admin/v1/admin-tokens",
            get(admin::handle_admin_token_list).post(admin::handle_admin_token_create),
        )
        .route(
            "/admin/v1/admin-tokens/{id}",
            delete(admin::handle_admin_token_revoke),
        )
        .route(
            "/admin/v1/migrations/plan",
            get(admin::handle_admin_migrations_plan),
        )
        .route(
            "/admin/v1/migrations/apply",
            post(admin::handle_admin_migrations_apply),
        )
        .route(
            "/admin/v1/migrations/status",
            get(admin::handle_admin_migrations_status),
        )
        .route(
            "/admin/v1/audit/verify",
            get(audit::handle_admin_audit_verify),
        )
        .route("/v1/audit", get(audit::handle_audit_list))
        .route("/v1/audit/verify", get(audit::handle_audit_verify))
        .route("/v1/audit/export", get(audit::handle_audit_export))
        .route("/v1/export", get(export::handle_export))
        .route("/v1/db/query", post(data::handle_db_query))
        .route("/v1/db/batch", post(data::handle_db_batch))
        // libSQL clients (Hrana over HTTP) and sqld's probes.
        .merge(
            Router::new()
                .route("/v2", get(hrana::handle_version_probe))
                .route("/v3", get(hrana::handle_version_probe))
                .route("/v2/pipeline", post(hrana::handle_pipeline))
                .route("/v3/pipeline", post(hrana::handle_pipeline))
                .route("/v3/cursor", post(hrana::handle_cursor)),
        )
        .route("/health", get(hrana::handle_health))
        .route("/version", get(hrana::handle_version))
        .route("/metrics", get(crate::telemetry::handle_metrics))
        .route_layer(axum::middleware::from_fn(around_route))
        .fallback(handle_not_found)
        .method_not_allowed_fallback(handle_method_not_allowed)
        .layer(axum::middleware::from_fn(run_to_completion))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);

    let security_headers = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));

    api.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(CatchPanicLayer::custom(handle_panic))
            .layer(security_headers),
    )
}

/// One span per request. `tenant_id` is filled in once the credential names the tenant.
/// The URI's query string is left out: nothing secret belongs there, but if a client puts
/// one there anyway it must not reach the logs.
fn request_span(req: &Request) -> tracing::Span {
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path(), MatchedPath::as_str);
    tracing::info_span!(
        "request",
        request_id,
        method = %req.method(),
        route,
        tenant_id = tracing::field::Empty,
        admin = tracing::field::Empty,
    )
}

#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    /// A random prefix drawn once per process, then a counter: unique and unguessable
    /// enough to correlate logs, without a getrandom call on every request.
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| hex::encode(silo_crypto::random_bytes::<8>()));
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{prefix}{n:08x}"))
            .ok()
            .map(RequestId::new)
    }
}

/// What a handler with a quick way returns: the answer itself when the quick way gave one,
/// else a boxed future for the rest. Such a handler is a plain function, so its arguments
/// are not copied into a future of its own: as an `async fn`, the `/v2/pipeline` handler
/// was a 1 KB future holding its arguments twice, moved on its way to its first poll.
pub(crate) enum Answer {
    Ready(Option<Response>),
    Later(std::pin::Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Answer {
    pub(crate) fn later(f: impl Future<Output = Response> + Send + 'static) -> Self {
        Answer::Later(Box::pin(f))
    }
}

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Answer::Ready(Some(response))
    }
}

impl Future for Answer {
    type Output = Response;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response> {
        match self.get_mut() {
            Answer::Ready(response) => {
                std::task::Poll::Ready(response.take().unwrap_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("answer polled twice")).into_response()
                }))
            }
            Answer::Later(future) => future.as_mut().poll(cx),
        }
    }
}

/// Around every routed request: its latency for the metrics and, on the libSQL routes, errors
/// in sqld's shape. One middleware for both, because each `from_fn` layer costs a clone of
/// the service inside it and a boxed future on every request (a second one was 0.45 µs of
/// a `/v2/pipeline` point query's 8.2, handler_cost bench).
async fn around_route(req: Request, next: axum::middleware::Next) -> Response {
    // Shared, not copied: a matched path is reference-counted.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let mut response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    if hrana::is_hrana_route(route) {
        response = hrana::sqld_error_shape(response).await;
    }
    crate::telemetry::record(route, &method, response.status(), started.elapsed());
    response
}

/// Runs each request's handler on a task of its own, inside the request's span. A client
/// that hangs up then cannot cut a handler short between its change and its audit event, or
/// between the steps of a multi-step operation: the handler finishes, and only the response
/// is lost.
///
/// Most requests (a cached credential and a quick query) finish the first time they are
/// polled: the handler is polled once here first, and only one that has to wait gets a task,
/// before this returns to the connection, so there is no moment at which a hang-up could
/// drop it half done. Sparing quick requests the task spares them a hand-off to the other
/// worker thread and back, which on a busy server cost more than the handler.
async fn run_to_completion(req: Request, next: axum::middleware::Next) -> Response {
    use std::task::Poll;
    use tracing::Instrument as _;
    let mut handler = Box::pin(next.run(req).instrument(tracing::Span::current()));
    let first = std::future::poll_fn(|cx| Poll::Ready(handler.as_mut().poll(cx))).await;
    if let Poll::Ready(response) = first {
        return response;
    }
    // Waiting: the handler moves to a task of its own, which polls it again at once (so it
    // registers that task's waker in place of this one's).
    match tokio::spawn(handler).await {
        Ok(response) => response,
        Err(e) => ApiError::internal(anyhow::anyhow!("handler task: {e}")).into_response(),
    }
}

async fn handle_not_found() -> ApiError {
    ApiError::NotFound("no such route; the API is described in the README".to_owned())
}

async fn handle_method_not_allowed() -> ApiError {
    ApiError::NotFound("this route does not take that method".to_owned())
}

fn handle_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(anyhow::anyhow!("a handler panicked")).into_response()
}
