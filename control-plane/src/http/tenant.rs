//! The caller's tenant: `/v1/tenant`, its settings, its security events.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
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
    ApiJson(req): ApiJson<Settings>,
) -> ApiResult<Json<Value>> {
    principal.require(Role::Owner)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let (tenant, uid) = (principal.tenant, principal.user_id.clone());
    state
        .catalog
        .blocking(move |c| {
            c.set_require_2fa(tenant, req.require_2fa)?;
            let detail = json!({ "require_2fa": req.require_2fa });
            c.record_security_event(
                Some(tenant),
                Some(&uid),
                "tenant.settings_changed",
                None,
                Some(&detail),
            )
        })
        .await?;
    Ok(Json(json!({ "require_2fa": req.require_2fa })))
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// `GET /v1/security-events` (admin+): newest first; `before` pages back.
pub(crate) async fn handle_security_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<EventsQuery>,
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
    let events = state
        .catalog
        .blocking(move |c| c.security_events(tenant, limit, q.before))
        .await?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({ "events": events, "next": next })))
}
