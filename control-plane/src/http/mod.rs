//! The HTTP API: routes, and the middleware every request passes through.
//!
//! Every request passes through one layer, [`edge`]: request id, trace span, panic guard,
//! run to completion, latency metrics, security headers, access log. Then (when configured)
//! CORS, then the handler; handlers read bodies through `extract::read_body`, which keeps
//! the body limit.

pub mod admin;
pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod data;
pub(crate) mod edge;
pub mod export;
pub(crate) mod extract;
pub(crate) mod hrana;
pub(crate) mod hrana_ws;
pub mod listener;
pub(crate) mod members;
pub(crate) mod ops;
pub(crate) mod sessions;
pub(crate) mod tenant;
pub mod tls;
pub(crate) mod two_factor;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};

use crate::error::ApiError;
use crate::state::AppState;

/// The whole API as a router, for the server and for in-process tests.
pub fn router(state: AppState) -> Router {
    let access_log = state.access_log;
    let cors = cors(&state.cors_origins);
    Router::new()
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
            "/admin/v1/tenants/{id}/vacuum",
            post(admin::handle_admin_tenant_vacuum),
        )
        .route(
            "/admin/v1/tenants/{id}/plan",
            post(admin::handle_admin_tenant_plan),
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
            "/admin/v1/accounts/unlock",
            post(admin::handle_admin_unlock),
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
        .route("/v1/db/vacuum", post(tenant::handle_vacuum))
        // libSQL clients (Hrana over HTTP) and sqld's probes.
        .merge(
            Router::new()
                .route("/v2", get(hrana::handle_version_probe))
                .route("/v3", get(hrana::handle_version_probe))
                .route("/v2/pipeline", post(hrana::handle_pipeline))
                .route("/v3/pipeline", post(hrana::handle_pipeline))
                .route("/v3/cursor", post(hrana::handle_cursor))
                // Hrana over HTTP v1 (no collision with /v1/db/*).
                .route("/v1/execute", post(hrana::handle_v1_execute))
                .route("/v1/batch", post(hrana::handle_v1_batch))
                // Hrana over WebSocket (ws:// and wss:// URLs).
                .route("/", get(hrana_ws::handle_upgrade)),
        )
        .route("/health", get(hrana::handle_health))
        .route("/version", get(hrana::handle_version))
        .route("/metrics", get(ops::handle_metrics))
        .fallback(handle_not_found)
        .method_not_allowed_fallback(handle_method_not_allowed)
        // Router::layer wraps each route (and the fallbacks) after routing: the edge sees
        // the route template. One call for both layers: each call boxes every route again,
        // and a boxed level costs a clone and an allocation per request. The body limit is
        // `extract::read_body`'s.
        .layer(
            tower::ServiceBuilder::new()
                .layer(edge::EdgeLayer { access_log })
                .option_layer(cors),
        )
        .with_state(state)
}

/// CORS for the configured origins (`--cors-origins`), or none. Credentials travel in the
/// Authorization header, never cookies, so no `Allow-Credentials`.
fn cors(origins: &[axum::http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{Method, header};
    (!origins.is_empty()).then(|| {
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins.to_vec())
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                edge::REQUEST_ID,
            ])
            .expose_headers([edge::REQUEST_ID, header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600))
    })
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

/// A channel's chunks as an answer body's stream (what `tokio-stream`'s wrapper does, in a
/// few lines): streamed exports and the audit log's JSON lines.
pub(crate) struct ChannelBody<T>(pub(crate) tokio::sync::mpsc::Receiver<Result<T, std::io::Error>>);

impl<T: Into<axum::body::Bytes>> futures_core::Stream for ChannelBody<T> {
    type Item = Result<axum::body::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Into::into)))
    }
}

async fn handle_not_found() -> ApiError {
    ApiError::NotFound("no such route; the API is described in the README".to_owned())
}

async fn handle_method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
