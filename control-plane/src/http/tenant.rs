//! The caller's tenant: `/v1/tenant`, its settings, its security events.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Role};
use crate::catalog::AuditFilter;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

/// `GET /v1/tenant`.
pub(crate) async fn handle_tenant_get(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    let tenant = principal.tenant;
    let placement = state.provisioner.placement().clone();
    let (row, size) = state
        .catalog
        .blocking(move |c| Ok((c.tenant(tenant)?, placement.size_bytes(tenant))))
        .await?;
    let row = row.ok_or_else(|| ApiError::NotFound("tenant not found".to_owned()))?;
    Ok(Json(json!({
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "plan": row.plan,
        "created_at": row.created_at,
        "db": { "placement": row.placement, "size_bytes": size, "schema_version": row.schema_version },
        "settings": { "require_2fa": row.require_2fa },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    require_2fa: bool,
}

/// `PATCH /v1/tenant/settings` (owner, step-up): e.g. require 2FA of every member.
pub(crate) async fn handle_tenant_settings(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<Settings>,
) -> ApiResult<Json<Value>> {
    principal.require(Role::Owner)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let tenant = principal.tenant;
    let before = state
        .catalog
        .blocking(move |c| c.tenant(tenant))
        .await?
        .map(|t| t.require_2fa);
    state
        .catalog
        .blocking(move |c| c.set_require_2fa(tenant, req.require_2fa))
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::SettingsChanged,
        &meta,
    )
    .target(format!("tenant:{tenant}"))
    .before(json!({ "require_2fa": before }))
    .after(json!({ "require_2fa": req.require_2fa }));
    state.audit(rec).await?;
    Ok(Json(json!({ "require_2fa": req.require_2fa })))
}

/// The audit actions that are security events.
const SECURITY_ACTIONS: &[AuditAction] = &[
    AuditAction::LoginFailed,
    AuditAction::Lockout,
    AuditAction::NewNetwork,
    AuditAction::RefreshReuse,
    AuditAction::TwoFactorEnabled,
    AuditAction::TwoFactorDisabled,
    AuditAction::StepUp,
    AuditAction::PasswordChanged,
    AuditAction::SignedOutEverywhere,
    AuditAction::SettingsChanged,
    AuditAction::TenantSuspended,
    AuditAction::TenantResumed,
    AuditAction::DeletionScheduled,
    AuditAction::DbTokenRotated,
];

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
) -> ApiResult<Json<Value>> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidInput(
            "limit must be between 1 and 1000".to_owned(),
        ));
    }
    let tenant = principal.tenant;
    let filter = AuditFilter {
        actions: SECURITY_ACTIONS
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        after_id: q.after,
        limit,
        ..AuditFilter::default()
    };
    let events = state
        .catalog
        .blocking(move |c| c.audit_events(tenant, &filter))
        .await?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "kind": e.action,
                "actor": e.actor,
                "target": e.target,
                "ip": e.ip,
                "outcome": e.outcome,
                "detail": e.after.and_then(|a| serde_json::from_str::<Value>(&a).ok()),
                "at": e.at,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events, "next": next })))
}

/// `DELETE /v1/tenant` (owner, step-up): suspended at once, destroyed after the grace
/// period. The answer carries the token that fetches the deletion certificate.
pub(crate) async fn handle_tenant_delete(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<(axum::http::StatusCode, Json<Value>)> {
    principal.require(Role::Owner)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let tenant = principal.tenant;
    let (after, token) = crate::deletion::schedule(&state, tenant).await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::DeletionScheduled,
        &meta,
    )
    .target(format!("tenant:{tenant}"))
    .after(json!({ "delete_after": after }));
    state.audit(rec).await?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({
            "status": "deleting",
            "delete_after": after,
            "certificate_token": secrecy::ExposeSecret::expose_secret(&token),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateRequest {
    certificate_token: secrecy::SecretString,
}

/// `POST /v1/deletion-certificate`: the signed certificate of a completed deletion, for the
/// holder of the token given when it was scheduled (the tenant's accounts are gone by then).
pub(crate) async fn handle_deletion_certificate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CertificateRequest>,
) -> ApiResult<Json<Value>> {
    let hash =
        silo_crypto::hash_token(secrecy::ExposeSecret::expose_secret(&req.certificate_token));
    let found = state
        .catalog
        .blocking(move |c| c.deletion_certificate(&hash))
        .await?;
    match found {
        None => Err(ApiError::NotFound(
            "no deletion matches this token".to_owned(),
        )),
        Some((_, None)) => Err(ApiError::Conflict(
            "the deletion is scheduled but not complete yet; ask again after the grace period"
                .to_owned(),
        )),
        Some((_, Some(doc))) => Ok(Json(
            serde_json::from_str(&doc).map_err(ApiError::internal)?,
        )),
    }
}
