//! The caller's tenant: `/v1/tenant`, its settings, its security events, its deletion.
//! Thin: the work is in [`crate::service::tenant`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use silo_api as api;

use crate::audit::RequestMeta;
use crate::auth::{Principal, Role};
use crate::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery, ClientIp};
use crate::service::tenant;
use crate::state::AppState;

/// `GET /v1/tenant`.
pub(crate) async fn handle_tenant_get(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<api::Tenant>> {
    Ok(Json(tenant::get(&state, principal.tenant).await?))
}

/// `PATCH /v1/tenant/settings` (owner, step-up): e.g. require 2FA of every member.
pub(crate) async fn handle_tenant_settings(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::TenantSettings>,
) -> ApiResult<Json<api::TenantSettings>> {
    principal.require(Role::Owner)?;
    principal.require_user()?;
    principal.require_step_up()?;
    Ok(Json(
        tenant::set_settings(&state, &principal, &meta, req).await?,
    ))
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    limit: Option<i64>,
    after: Option<i64>,
}

/// `GET /v1/security-events` (admin+): the security-relevant part of the audit log, oldest
/// first; `next` is the cursor for `after`.
pub(crate) async fn handle_security_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<api::SecurityEvents>> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    Ok(Json(
        tenant::security_events(&state, principal.tenant, q.limit, q.after).await?,
    ))
}

/// `POST /v1/db/vacuum` (admin+; API keys with `db:admin`): gives deleted data's space back.
pub(crate) async fn handle_vacuum(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<Json<api::Vacuumed>> {
    principal.require(Role::Admin)?;
    principal.require_scope(crate::auth::Scope::DbAdmin)?;
    Ok(Json(
        tenant::vacuum(
            &state,
            principal.tenant,
            principal.actor(),
            &meta,
            tenant::VacuumBy::Tenant,
        )
        .await?,
    ))
}

/// `DELETE /v1/tenant` (owner, step-up): suspended at once, destroyed after the grace
/// period. The answer carries the token that fetches the deletion certificate.
pub(crate) async fn handle_tenant_delete(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<(StatusCode, Json<api::DeletionScheduled>)> {
    principal.require(Role::Owner)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let scheduled = tenant::schedule_deletion(&state, &principal, &meta).await?;
    Ok((StatusCode::ACCEPTED, Json(scheduled)))
}

/// `POST /v1/deletion-certificate`: the signed certificate of a completed deletion, for the
/// holder of the token given when it was scheduled.
pub(crate) async fn handle_deletion_certificate(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<api::CertificateRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(tenant::deletion_certificate(&state, ip, req).await?))
}
