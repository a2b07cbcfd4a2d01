//! Two-factor authentication: `/v1/auth/2fa/*`. Thin: the work is in
//! [`crate::service::two_factor`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use silo_api as api;

use crate::audit::RequestMeta;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::http::extract::ApiJson;
use crate::service::two_factor;
use crate::state::AppState;

/// `POST /v1/auth/2fa/enroll`: a new secret (pending until confirmed), shown once.
pub(crate) async fn handle_2fa_enroll(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<Json<api::TwoFactorEnrollment>> {
    principal.require_user()?;
    Ok(Json(two_factor::enroll(&state, &principal, &meta).await?))
}

/// `POST /v1/auth/2fa/confirm`: turns 2FA on; ten recovery codes, shown once.
pub(crate) async fn handle_2fa_confirm(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::CodeRequest>,
) -> ApiResult<Json<api::RecoveryCodes>> {
    let session = principal.require_user()?.to_owned();
    Ok(Json(
        two_factor::confirm(&state, &principal, &session, &meta, req).await?,
    ))
}

/// `POST /v1/auth/2fa/verify`: step-up for five minutes; a fresh access token.
pub(crate) async fn handle_2fa_verify(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::CodeRequest>,
) -> ApiResult<Json<api::SteppedUp>> {
    let session = principal.require_user()?.to_owned();
    Ok(Json(
        two_factor::step_up(&state, &principal, &session, &meta, req).await?,
    ))
}

/// `DELETE /v1/auth/2fa`: turns 2FA off (step-up and a current code needed).
pub(crate) async fn handle_2fa_remove(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::CodeRequest>,
) -> ApiResult<StatusCode> {
    principal.require_user()?;
    principal.require_step_up()?;
    two_factor::remove(&state, &principal, &meta, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
