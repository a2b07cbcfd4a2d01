//! API keys: `/v1/api-keys`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Role, Scope, new_api_key};
use crate::catalog::{CatalogError, NewApiKey, now_unix};
use crate::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::state::AppState;

const MAX_NAME_CHARS: usize = 100;
const MAX_EXPIRY_DAYS: i64 = 3650;
const MAX_ALLOWED_IPS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    name: String,
    scopes: Vec<String>,
    expires_in_days: Option<i64>,
    allowed_ips: Option<Vec<String>>,
}

/// `POST /v1/api-keys`: any member may make keys for programs, with scopes their role
/// allows. The key is in this response only.
pub(crate) async fn handle_api_key_create(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require(Role::Viewer)?;
    principal.require_user()?;
    principal.require_step_up()?;
    let name = req.name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::InvalidInput(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters, without control characters"
        )));
    }
    if req.scopes.is_empty() {
        return Err(ApiError::InvalidInput(format!(
            "give at least one scope: {}",
            Scope::ALL.map(Scope::as_str).join(", ")
        )));
    }
    let mut scopes = Vec::new();
    for s in &req.scopes {
        let scope: Scope = s.parse().map_err(|()| {
            ApiError::InvalidInput(format!(
                "unknown scope {s:?}; scopes are {}",
                Scope::ALL.map(Scope::as_str).join(", ")
            ))
        })?;
        if principal.role < scope.min_role() {
            return Err(ApiError::Forbidden(
                "a key cannot have more power than your role: ask an admin for this scope",
            ));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    scopes.sort();
    let expires_at = match req.expires_in_days {
        None => None,
        Some(d) if (1..=MAX_EXPIRY_DAYS).contains(&d) => Some(now_unix() + d * 86_400),
        Some(_) => {
            return Err(ApiError::InvalidInput(format!(
                "expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}"
            )));
        }
    };
    let allowed_ips = match req.allowed_ips {
        None => None,
        Some(list) if list.is_empty() || list.len() > MAX_ALLOWED_IPS => {
            return Err(ApiError::InvalidInput(format!(
                "allowed_ips takes 1 to {MAX_ALLOWED_IPS} CIDRs (leave it out to allow any address)"
            )));
        }
        Some(list) => {
            let mut nets = Vec::new();
            for cidr in &list {
                // A bare address means that one host.
                let net = cidr
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ApiError::InvalidInput(format!("{cidr:?} is not an IP address or CIDR"))
                    })?;
                nets.push(net.trunc());
            }
            Some(serde_json::to_string(&nets).map_err(ApiError::internal)?)
        }
    };
    let scope_text = scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    // The prefix is unique; a collision (36^8 space) is retried with a fresh key.
    for _ in 0..3 {
        let (prefix, key) = new_api_key();
        let row = NewApiKey {
            id: hex::encode(silo_crypto::random_bytes::<12>()),
            tenant: principal.tenant,
            user_id: principal.user_id.clone(),
            name: name.clone(),
            prefix: prefix.clone(),
            key_hash: silo_crypto::hash_token(key.expose_secret()),
            scopes: scope_text.clone(),
            allowed_ips: allowed_ips.clone(),
            expires_at,
        };
        let id = row.id.clone();
        match state
            .catalog
            .blocking(move |c| c.create_api_key(&row))
            .await
        {
            Ok(()) => {
                let rec = AuditRecord::new(
                    Some(principal.tenant),
                    principal.actor(),
                    AuditAction::ApiKeyCreated,
                    &meta,
                )
                .target(format!("api_key:{id}"))
                .after(json!({
                    "name": name,
                    "prefix": prefix,
                    "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "expires_at": expires_at,
                    "allowed_ips": allowed_ips,
                }));
                state.audit(rec).await?;
                return Ok((
                    StatusCode::CREATED,
                    Json(json!({
                        "id": id,
                        "key": key.expose_secret(),
                        "prefix": prefix,
                        "name": name,
                        "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                        "expires_at": expires_at,
                    })),
                ));
            }
            Err(CatalogError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal(anyhow::anyhow!(
        "could not find a free API key prefix"
    )))
}

/// `GET /v1/api-keys`: admins see every key of the tenant, others their own. Never the key.
pub(crate) async fn handle_api_key_list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    principal.require_user()?;
    let tenant = principal.tenant;
    let only = (principal.role < Role::Admin).then(|| principal.user_id.clone());
    let keys = state
        .catalog
        .blocking(move |c| c.api_keys(tenant, only.as_deref()))
        .await?;
    Ok(Json(json!({ "api_keys": keys })))
}

/// `DELETE /v1/api-keys/{id}`: the key stops working on the next request.
pub(crate) async fn handle_api_key_revoke(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require_user()?;
    let tenant = principal.tenant;
    let only = (principal.role < Role::Admin).then(|| principal.user_id.clone());
    let key_id = id.clone();
    let revoked = state
        .catalog
        .blocking(move |c| c.revoke_api_key(tenant, &id, only.as_deref()))
        .await?;
    if revoked {
        let rec = AuditRecord::new(
            Some(tenant),
            principal.actor(),
            AuditAction::ApiKeyRevoked,
            &meta,
        )
        .target(format!("api_key:{key_id}"));
        state.audit(rec).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no such API key".to_owned()))
    }
}
