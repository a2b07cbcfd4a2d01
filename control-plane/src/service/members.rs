//! Members, roles and invitations. The owner rules (the last owner stays, only owners make
//! owners) are enforced by the catalog, in the same transaction as the change.

use secrecy::ExposeSecret;
use serde_json::json;
use silo_api as api;
use silo_crypto::{hash_token, random_token};
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Role, hash_password};
use crate::catalog::Joiner;
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::{
    normalize_email, password_matches, second_factor_ok, start_session, validate_password,
};
use crate::state::AppState;

/// Invitations are valid for 7 days.
pub(crate) const INVITE_TTL_SECS: i64 = 7 * 24 * 60 * 60;
pub(crate) const INVITE_TOKEN_PREFIX: &str = "silo_inv_";

/// Every member of the tenant (people, not keys).
pub(crate) async fn list(state: &AppState, tenant: TenantId) -> ApiResult<api::MemberList> {
    let members = state.catalog.blocking(move |c| c.members(tenant)).await?;
    Ok(api::MemberList { members })
}

/// Stores an invitation of `email` to `tenant` with `role` and returns its token (shown
/// once; only its hash is kept). `by` is the inviting user, `None` for an operator.
pub(crate) async fn invite(
    state: &AppState,
    tenant: TenantId,
    email: String,
    role: Role,
    by: Option<String>,
) -> ApiResult<api::InviteCreated> {
    let token = random_token(INVITE_TOKEN_PREFIX);
    let hash = hash_token(token.expose_secret());
    state
        .catalog
        .blocking(move |c| {
            c.create_invite(tenant, &email, role, by.as_deref(), &hash, INVITE_TTL_SECS)
        })
        .await?;
    Ok(api::InviteCreated {
        invite_token: token.expose_secret().to_owned(),
        expires_in: INVITE_TTL_SECS,
    })
}

/// A member's invitation of someone to the caller's tenant, audited.
pub(crate) async fn invite_by_member(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    req: api::InviteRequest,
) -> ApiResult<api::InviteCreated> {
    if req.role == Role::Owner && principal.role != Role::Owner {
        return Err(ApiError::Forbidden("only an owner can invite an owner"));
    }
    let email = normalize_email(&req.email)?;
    let tenant = principal.tenant;
    let created = invite(
        state,
        tenant,
        email.clone(),
        req.role,
        Some(principal.user_id.clone()),
    )
    .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberInvited,
        meta,
    )
    .target(format!("email:{email}"))
    .after(json!({ "email": email, "role": req.role }));
    state.audit(rec).await?;
    Ok(created)
}

/// Joins the tenant of an invitation and signs in. A new email gets an account with
/// `password`; an email that has one must prove it with that account's password (and its
/// second factor, when on).
pub(crate) async fn accept(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    meta: &RequestMeta,
    req: api::AcceptInvite,
) -> ApiResult<api::Tokens> {
    state
        .throttles
        .auth
        .check(ip)
        .map_err(ApiError::RateLimited)?;
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
            if !password_matches(Some(stored), password).await? {
                return Err(ApiError::InvalidCredentials);
            }
            if totp_enabled {
                let code = req.totp.as_ref().ok_or(ApiError::TotpRequired(
                    "your account has two-factor authentication: send a current code as totp",
                ))?;
                if !second_factor_ok(state, &user_id, &invite.email, code.expose_secret()).await? {
                    return Err(ApiError::TotpRequired(
                        "that code is not valid (or was already used)",
                    ));
                }
            }
            (user_id, None)
        }
        None => {
            if state.signup.mode == crate::state::SignupMode::Closed {
                return Err(ApiError::Forbidden(
                    "this server admits no new accounts: the invitation can only be accepted by someone who already has one",
                ));
            }
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
        meta,
    )
    .target(format!("user:{user_id}"))
    .after(json!({ "email": invite.email, "role": invite.role }));
    state.audit(rec).await?;
    start_session(state, user_id, invite.tenant, false).await
}

/// Changes a member's role (the catalog applies the owner rules), audited.
pub(crate) async fn set_role(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    user_id: String,
    role: Role,
) -> ApiResult<api::MemberRole> {
    let (tenant, actor) = (principal.tenant, principal.role);
    let target = user_id.clone();
    let previous = state
        .catalog
        .blocking(move |c| c.set_role(tenant, &target, role, actor))
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberRoleChanged,
        meta,
    )
    .target(format!("user:{user_id}"))
    .before(json!({ "role": previous }))
    .after(json!({ "role": role }));
    state.audit(rec).await?;
    Ok(api::MemberRole { user_id, role })
}

/// Removes a member (the catalog applies the owner rules), audited.
pub(crate) async fn remove(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    user_id: String,
) -> ApiResult<()> {
    let (tenant, actor) = (principal.tenant, principal.role);
    let target = user_id.clone();
    let previous = state
        .catalog
        .blocking(move |c| c.remove_member(tenant, &target, actor))
        .await?;
    state
        .close_streams_of_user(Some(tenant), user_id.clone(), false)
        .await;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::MemberRemoved,
        meta,
    )
    .target(format!("user:{user_id}"))
    .before(json!({ "role": previous }));
    state.audit(rec).await
}
