//! Members, roles and invitations: `/v1/members`, `/v1/invites`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use silo_crypto::{hash_token, random_token};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Role, hash_password, verify_password};
use crate::catalog::Joiner;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::http::sessions::{
    Tokens, normalize_email, second_factor_ok, start_session, validate_password,
};
use crate::state::AppState;

/// Invitations are valid for 7 days.
const INVITE_TTL_SECS: i64 = 7 * 24 * 60 * 60;
const INVITE_TOKEN_PREFIX: &str = "silo_inv_";

/// `GET /v1/members`: every member may see who else is in the tenant (people, not keys:
/// programs have no business listing people).
pub(crate) async fn handle_members_list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    principal.require(Role::Viewer)?;
    principal.require_user()?;
    let tenant = principal.tenant;
    let members = state.catalog.blocking(move |c| c.members(tenant)).await?;
    Ok(Json(json!({ "members": members })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteRequest {
    email: String,
    role: Role,
}

/// `POST /v1/invites` (admin+): a single-use invitation token, shown once.
pub(crate) async fn handle_invite_create(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<InviteRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    // An invitation grants a role: without step-up, a stolen session could invite a
    // 2FA-less account of its own and sidestep every later step-up check.
    principal.require_step_up()?;
    if req.role == Role::Owner && principal.role != Role::Owner {
        return Err(ApiError::Forbidden("only an owner can invite an owner"));
    }
    let email = normalize_email(&req.email)?;
    let token = random_token(INVITE_TOKEN_PREFIX);
    let hash = hash_token(token.expose_secret());
    let (tenant, by, invited) = (principal.tenant, principal.user_id.clone(), email.clone());
    state
        .catalog
        .blocking(move |c| {
            c.create_invite(tenant, &email, req.role, Some(&by), &hash, INVITE_TTL_SECS)
        })
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberInvited,
        &meta,
    )
    .target(format!("email:{invited}"))
    .after(json!({ "email": invited, "role": req.role }));
    state.audit(rec).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "invite_token": token.expose_secret(), "expires_in": INVITE_TTL_SECS })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptRequest {
    invite_token: SecretString,
    /// The new account's password, or the existing account's when the email has one.
    password: SecretString,
    /// A current code, when the existing account has 2FA on.
    #[serde(default)]
    totp: Option<SecretString>,
}

/// `POST /v1/invites/accept`: joins the tenant and signs in. A new email gets an account
/// with `password`; an email that has one must prove it with that account's password.
pub(crate) async fn handle_invite_accept(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(req): ApiJson<AcceptRequest>,
) -> ApiResult<(StatusCode, Json<Tokens>)> {
    let hash = hash_token(req.invite_token.expose_secret());
    let invite = state
        .catalog
        .blocking(move |c| c.open_invite(&hash))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(
                "the invitation is not valid, was already used, or has expired".to_owned(),
            )
        })?;
    let email = invite.email.clone();
    let existing = state
        .catalog
        .blocking(move |c| c.user_by_email(&email))
        .await?;
    let password = req.password;
    // (user id, password hash if the account is new)
    let (user_id, new_hash) = match existing {
        Some((user_id, stored, totp_enabled)) => {
            let ok = tokio::task::spawn_blocking(move || verify_password(Some(&stored), &password))
                .await
                .map_err(ApiError::internal)?;
            if !ok {
                return Err(ApiError::InvalidCredentials);
            }
            if totp_enabled {
                let code = req.totp.as_ref().ok_or(ApiError::TotpRequired(
                    "your account has two-factor authentication: send a current code as totp",
                ))?;
                if !second_factor_ok(&state, &user_id, &invite.email, code.expose_secret()).await? {
                    return Err(ApiError::TotpRequired(
                        "that code is not valid (or was already used)",
                    ));
                }
            }
            (user_id, None)
        }
        None => {
            validate_password(&password)?;
            let hashed = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            (hex::encode(silo_crypto::random_bytes::<16>()), Some(hashed))
        }
    };
    let uid = user_id.clone();
    state
        .catalog
        .blocking(move |c| {
            let joiner = match &new_hash {
                Some(h) => Joiner::New {
                    user_id: &uid,
                    password_hash: h,
                },
                None => Joiner::Existing { user_id: &uid },
            };
            c.accept_invite(&hash, joiner)
        })
        .await?;
    let rec = AuditRecord::new(
        Some(invite.tenant),
        format!("user:{user_id}"),
        AuditAction::MemberJoined,
        &meta,
    )
    .target(format!("user:{user_id}"))
    .after(json!({ "email": invite.email, "role": invite.role }));
    state.audit(rec).await?;
    let tokens = start_session(&state, user_id, invite.tenant, false).await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleRequest {
    role: Role,
}

/// `PATCH /v1/members/{user_id}` (admin+; owner rules in the catalog).
pub(crate) async fn handle_member_update(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(user_id): Path<String>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> ApiResult<Json<Value>> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let (tenant, actor) = (principal.tenant, principal.role);
    let target = user_id.clone();
    let previous = state
        .catalog
        .blocking(move |c| c.set_role(tenant, &target, req.role, actor))
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberRoleChanged,
        &meta,
    )
    .target(format!("user:{user_id}"))
    .before(json!({ "role": previous }))
    .after(json!({ "role": req.role }));
    state.audit(rec).await?;
    Ok(Json(json!({ "user_id": user_id, "role": req.role })))
}

/// `DELETE /v1/members/{user_id}` (admin+; owner rules in the catalog).
pub(crate) async fn handle_member_remove(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Role::Admin)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let (tenant, actor) = (principal.tenant, principal.role);
    let target = user_id.clone();
    let previous = state
        .catalog
        .blocking(move |c| c.remove_member(tenant, &target, actor))
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberRemoved,
        &meta,
    )
    .target(format!("user:{user_id}"))
    .before(json!({ "role": previous }));
    state.audit(rec).await?;
    Ok(StatusCode::NO_CONTENT)
}
