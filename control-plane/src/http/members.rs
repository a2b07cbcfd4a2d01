//! Members, roles and invitations: `/v1/members`, `/v1/invites`. Thin: the work is in
//! [`crate::service::members`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use silo_api as api;

use crate::audit::RequestMeta;
use crate::auth::{Principal, Role};
use crate::error::ApiResult;
use crate::http::extract::{ApiJson, ClientIp};
use crate::service::members;
use crate::state::AppState;

/// `GET /v1/members`: every member may see who else is in the tenant (people, not keys:
/// programs have no business listing people).
pub(crate) async fn handle_members_list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<api::MemberList>> {
    principal.require(Role::Viewer)?;
    principal.require_user()?;
    Ok(Json(members::list(&state, principal.tenant).await?))
}

/// `POST /v1/invites` (admin+): a single-use invitation token, shown once.
pub(crate) async fn handle_invite_create(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::InviteRequest>,
) -> ApiResult<(StatusCode, Json<api::InviteCreated>)> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    // An invitation grants a role: without step-up, a stolen session could invite a
    // 2FA-less account of its own and sidestep every later step-up check.
    principal.require_step_up()?;
    let created = members::invite_by_member(&state, &principal, &meta, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `POST /v1/invites/accept`: joins the tenant and signs in.
pub(crate) async fn handle_invite_accept(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::AcceptInvite>,
) -> ApiResult<(StatusCode, Json<api::Tokens>)> {
    let tokens = members::accept(&state, ip, &meta, req).await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}

/// `PATCH /v1/members/{user_id}` (admin+, step-up; owner rules in the catalog).
pub(crate) async fn handle_member_update(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<api::RoleChange>,
) -> ApiResult<Json<api::MemberRole>> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    principal.require_step_up()?;
    Ok(Json(
        members::set_role(&state, &principal, &meta, user_id, req.role).await?,
    ))
}

/// `DELETE /v1/members/{user_id}` (admin+, step-up; owner rules in the catalog).
pub(crate) async fn handle_member_remove(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    principal.require_step_up()?;
    members::remove(&state, &principal, &meta, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
