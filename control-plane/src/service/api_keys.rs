//! API keys: made by members for programs, scoped no wider than the maker's role, shown
//! once, stored as hashes, revocable.

use secrecy::ExposeSecret;
use serde_json::json;
use silo_api as api;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Scope, new_api_key};
use crate::catalog::{CatalogError, NewApiKey, now_unix};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const MAX_NAME_CHARS: usize = 100;
const MAX_EXPIRY_DAYS: i64 = 3650;
const MAX_ALLOWED_IPS: usize = 100;

/// A new key of the caller, with scopes their role allows. The key is in this answer only.
pub(crate) async fn create(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    req: api::CreateApiKey,
) -> ApiResult<api::ApiKeyCreated> {
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
                    meta,
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
                return Ok(api::ApiKeyCreated {
                    id,
                    key: key.expose_secret().to_owned(),
                    prefix,
                    name,
                    scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                    expires_at,
                });
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

/// The tenant's keys: every key, or with `only` the keys that user made. Never the key.
pub(crate) async fn list(
    state: &AppState,
    tenant: TenantId,
    only: Option<String>,
) -> ApiResult<api::ApiKeyList> {
    let keys = state
        .catalog
        .blocking(move |c| c.api_keys(tenant, only.as_deref()))
        .await?;
    Ok(api::ApiKeyList { api_keys: keys })
}

/// Revokes a key of the tenant (with `only`, one that user made): it stops working on the
/// next request. 404 when there is no such key.
pub(crate) async fn revoke(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    id: String,
    only: Option<String>,
) -> ApiResult<()> {
    let tenant = principal.tenant;
    let key_id = id.clone();
    let revoked = state
        .catalog
        .blocking(move |c| c.revoke_api_key(tenant, &id, only.as_deref()))
        .await?;
    if !revoked {
        return Err(ApiError::NotFound("no such API key".to_owned()));
    }
    // Its open streams end now: a transaction one holds must not keep the writer.
    state
        .close_streams_of_credential(tenant, format!("api_key:{key_id}"))
        .await;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::ApiKeyRevoked,
        meta,
    )
    .target(format!("api_key:{key_id}"));
    state.audit(rec).await
}
