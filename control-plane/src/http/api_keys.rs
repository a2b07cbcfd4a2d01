//! API keys: `/v1/api-keys`. Thin: the work is in [`crate::service::api_keys`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use silo_api as api;

use crate::audit::RequestMeta;
use crate::auth::{Principal, Role};
use crate::error::ApiResult;
use crate::http::extract::ApiJson;
use crate::service::api_keys;
use crate::state::AppState;

/// `POST /v1/api-keys`: any member may make keys for programs, with scopes their role
/// allows. The key is in this response only.
pub(crate) async fn handle_api_key_create(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<api::CreateApiKey>,
) -> ApiResult<(StatusCode, Json<api::ApiKeyCreated>)> {
    principal.require(Role::Viewer)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let created = api_keys::create(&state, &principal, &meta, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Admins act on every key of the tenant, others on their own.
fn own_keys_only(principal: &Principal) -> Option<String> {
    (principal.role < Role::Admin).then(|| principal.user_id.clone())
}

/// `GET /v1/api-keys`: admins see every key of the tenant, others their own. Never the key.
pub(crate) async fn handle_api_key_list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<api::ApiKeyList>> {
    principal.require_user()?;
    Ok(Json(
        api_keys::list(&state, principal.tenant, own_keys_only(&principal)).await?,
    ))
}

/// `DELETE /v1/api-keys/{id}`: the key stops working on the next request.
pub(crate) async fn handle_api_key_revoke(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require_user()?;
    let only = own_keys_only(&principal);
    api_keys::revoke(&state, &principal, &meta, id, only).await?;
    Ok(StatusCode::NO_CONTENT)
}
