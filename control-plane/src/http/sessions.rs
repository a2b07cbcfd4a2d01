//! Signup and sessions: `/v1/signup`, `/v1/auth/login`, `/v1/auth/refresh`, `/v1/me`, …
//! Thin: the work is in [`crate::service::accounts`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use silo_api as api;

use crate::audit::RequestMeta;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::http::extract::{ApiJson, ClientIp};
use crate::service::accounts;
use crate::state::AppState;

/// `POST /v1/signup`: a new tenant, its owner, and its own database, ready on return.
pub(crate) async fn handle_signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::SignupRequest>,
) -> ApiResult<(StatusCode, Json<api::SignupAnswer>)> {
    let answer = accounts::signup(&state, ip, &meta, req).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `POST /v1/auth/login`.
pub(crate) async fn handle_login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::LoginRequest>,
) -> ApiResult<Json<api::Tokens>> {
    Ok(Json(accounts::login(&state, ip, &meta, req).await?))
}

/// `POST /v1/auth/refresh`: spends the refresh token and returns a new pair.
pub(crate) async fn handle_refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::RefreshRequest>,
) -> ApiResult<Json<api::Tokens>> {
    Ok(Json(accounts::refresh(&state, &meta, req).await?))
}

/// `POST /v1/auth/logout`: ends the caller's session.
pub(crate) async fn handle_logout(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<StatusCode> {
    let session = principal.require_user()?.to_owned();
    accounts::logout(&state, &principal, &session, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/password`: every session of the user ends; the answer is a fresh one.
pub(crate) async fn handle_password_change(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::PasswordChange>,
) -> ApiResult<Json<api::Tokens>> {
    principal.require_user()?;
    Ok(Json(
        accounts::change_password(&state, &principal, &meta, req).await?,
    ))
}

/// `POST /v1/auth/sign-out-everywhere`: ends every session of the caller, this one too.
pub(crate) async fn handle_sign_out_everywhere(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
) -> ApiResult<StatusCode> {
    principal.require_user()?;
    accounts::sign_out_everywhere(&state, &principal, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/me`.
pub(crate) async fn handle_me(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<api::Me>> {
    Ok(Json(accounts::me(&state, &principal).await?))
}
