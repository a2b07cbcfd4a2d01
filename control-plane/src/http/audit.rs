//! The audit log over HTTP: `/v1/audit`, `/v1/audit/verify`, `/admin/v1/audit/verify`.
//! Thin: the work is in [`crate::service::audit`].

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use silo_api as api;
use silo_tenant_runtime::TenantId;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::http::admin::Admin;
use crate::http::extract::ApiQuery;
use crate::service::audit;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    after: Option<i64>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Admins, or API keys with `audit:read`.
fn may_read_audit(principal: &Principal) -> ApiResult<()> {
    principal.require(Role::Admin)?;
    principal.require_scope(Scope::AuditRead)
}

/// `GET /v1/audit?limit=&after=&action=&since=&until=`: the tenant's events, oldest first.
pub(crate) async fn handle_audit_list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<api::AuditEvents>> {
    may_read_audit(&principal)?;
    let query = audit::EventQuery {
        limit: q.limit,
        after: q.after,
        action: q.action,
        since: q.since,
        until: q.until,
    };
    Ok(Json(audit::events(&state, principal.tenant, query).await?))
}

/// `GET /v1/audit/export`: the tenant's whole audit log as JSON lines, oldest first.
pub(crate) async fn handle_audit_export(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    may_read_audit(&principal)?;
    let rx = audit::export(&state, principal.tenant);
    let body = axum::body::Body::from_stream(super::ChannelBody(rx));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response())
}

/// `GET /v1/audit/verify`: checks the tenant's chain and its signed head.
pub(crate) async fn handle_audit_verify(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<api::ChainCheck>> {
    may_read_audit(&principal)?;
    Ok(Json(audit::verify(&state, principal.tenant).await?))
}

#[derive(Deserialize)]
pub(crate) struct AdminVerifyQuery {
    tenant: Option<String>,
}

/// `GET /admin/v1/audit/verify[?tenant=ID]`: one chain, or every chain (the platform's and
/// each tenant's).
pub(crate) async fn handle_admin_audit_verify(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminVerifyQuery>,
) -> ApiResult<Json<api::AuditVerification>> {
    let only: Option<TenantId> = q
        .tenant
        .as_deref()
        .map(|t| {
            t.parse()
                .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))
        })
        .transpose()?;
    Ok(Json(audit::verify_all(&state, only).await?))
}
