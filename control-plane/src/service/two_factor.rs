//! Two-factor authentication (TOTP): enrolment, confirmation with recovery codes, step-up,
//! removal. The secret is sealed in the catalog; see [`crate::two_factor`] for the codes.

use secrecy::{ExposeSecret, SecretString};
use silo_api as api;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::second_factor_ok;
use crate::state::AppState;
use crate::two_factor;

/// A current TOTP code (or a recovery code) of the caller, or 401 `totp_required`.
async fn require_code(
    state: &AppState,
    principal: &Principal,
    code: &SecretString,
) -> ApiResult<()> {
    if second_factor_ok(
        state,
        &principal.user_id,
        &principal.email,
        code.expose_secret(),
    )
    .await?
    {
        Ok(())
    } else {
        Err(ApiError::TotpRequired(
            "that code is not valid (or was already used)",
        ))
    }
}

/// A new secret, pending until confirmed. The secret is in this answer only; the catalog
/// keeps it sealed.
pub(crate) async fn enroll(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
) -> ApiResult<api::TwoFactorEnrollment> {
    let (secret, sealed) = two_factor::new_secret(&state.keyring, &principal.user_id);
    let totp = two_factor::totp(&secret, &principal.email).map_err(ApiError::internal)?;
    let uid = principal.user_id.clone();
    let stored = state
        .catalog
        .blocking(move |c| c.set_pending_totp(&uid, &sealed))
        .await?;
    if !stored {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on; remove it first to enroll a new device"
                .to_owned(),
        ));
    }
    let rec = AuditRecord::new(
        None,
        principal.actor(),
        AuditAction::TwoFactorEnrolled,
        meta,
    )
    .target(format!("user:{}", principal.user_id));
    state.audit_for_user(&principal.user_id, rec).await?;
    Ok(api::TwoFactorEnrollment {
        secret: totp.secret().to_base32(),
        otpauth_uri: totp
            .to_url()
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{e:?}")))?,
    })
}

/// A code from the new device turns 2FA on and returns ten single-use recovery codes
/// (shown once). `session` is the caller's, which counts as verified from now on.
pub(crate) async fn confirm(
    state: &AppState,
    principal: &Principal,
    session: &str,
    meta: &RequestMeta,
    req: api::CodeRequest,
) -> ApiResult<api::RecoveryCodes> {
    let uid = principal.user_id.clone();
    let st = state.catalog.blocking(move |c| c.totp_state(&uid)).await?;
    if st.enabled {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on".to_owned(),
        ));
    }
    if st.sealed_secret.is_none() {
        return Err(ApiError::Conflict(
            "enroll first: POST /v1/auth/2fa/enroll".to_owned(),
        ));
    }
    if two_factor::is_recovery_code(req.code.expose_secret())
        || !second_factor_ok(
            state,
            &principal.user_id,
            &principal.email,
            req.code.expose_secret(),
        )
        .await?
    {
        return Err(ApiError::InvalidInput(
            "that code is not valid; check the authenticator app and the device clock".to_owned(),
        ));
    }
    let codes = two_factor::new_recovery_codes();
    let hashes: Vec<[u8; 32]> = codes
        .iter()
        .map(|c| two_factor::recovery_code_hash(c))
        .collect();
    let (uid, sid) = (principal.user_id.clone(), session.to_owned());
    state
        .catalog
        .blocking(move |c| {
            c.enable_totp(&uid, &hashes)?;
            c.mark_session_verified(&sid)
        })
        .await?;
    let rec = AuditRecord::new(None, principal.actor(), AuditAction::TwoFactorEnabled, meta)
        .target(format!("user:{}", principal.user_id));
    state.audit_for_user(&principal.user_id, rec).await?;
    Ok(api::RecoveryCodes {
        recovery_codes: codes,
    })
}

/// Proves the second factor again: sensitive routes accept the session for five minutes.
/// Returns a fresh access token for the same session.
pub(crate) async fn step_up(
    state: &AppState,
    principal: &Principal,
    session: &str,
    meta: &RequestMeta,
    req: api::CodeRequest,
) -> ApiResult<api::SteppedUp> {
    let uid = principal.user_id.clone();
    if !state
        .catalog
        .blocking(move |c| c.totp_state(&uid))
        .await?
        .enabled
    {
        return Err(ApiError::Conflict(
            "two-factor authentication is not on for this account".to_owned(),
        ));
    }
    require_code(state, principal, &req.code).await?;
    let (uid, sid, tenant) = (
        principal.user_id.clone(),
        session.to_owned(),
        principal.tenant,
    );
    state
        .audit(
            AuditRecord::new(Some(tenant), principal.actor(), AuditAction::StepUp, meta)
                .target(format!("session:{session}")),
        )
        .await?;
    let sv = state
        .catalog
        .blocking(move |c| {
            c.mark_session_verified(&sid)?;
            c.session(&sid, &uid, tenant)
        })
        .await?
        .map(|row| row.session_session_version)
        .ok_or(ApiError::Unauthenticated(
            "this session has ended; sign in again",
        ))?;
    let access = state
        .tokens
        .issue(
            &principal.user_id,
            principal.tenant,
            session,
            sv,
            principal.role,
        )
        .map_err(ApiError::internal)?;
    Ok(api::SteppedUp {
        access_token: access.expose_secret().to_owned(),
        expires_in: crate::auth::ACCESS_TOKEN_TTL_SECS,
        step_up_expires_in: two_factor::STEP_UP_WINDOW_SECS,
    })
}

/// Turns 2FA off (the caller has stepped up; a current code is needed too).
pub(crate) async fn remove(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    req: api::CodeRequest,
) -> ApiResult<()> {
    require_code(state, principal, &req.code).await?;
    let uid = principal.user_id.clone();
    state
        .catalog
        .blocking(move |c| c.disable_totp(&uid))
        .await?;
    let rec = AuditRecord::new(
        None,
        principal.actor(),
        AuditAction::TwoFactorDisabled,
        meta,
    )
    .target(format!("user:{}", principal.user_id));
    state.audit_for_user(&principal.user_id, rec).await
}
