//! Platform admin tokens: minted (shown once), listed without their secrets, revoked (never
//! the last live one).

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use silo_api as api;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::state::AppState;

pub use crate::auth::ADMIN_TOKEN_PREFIX;

/// Mints a token into the catalog and returns (id, token); only its hash is stored. Used
/// online (`create`) and offline (`silo init`). Blocking.
pub fn mint(catalog: &Catalog, name: &str) -> crate::catalog::Result<(String, SecretString)> {
    let id = hex::encode(silo_crypto::random_bytes::<8>());
    let token = silo_crypto::random_token(ADMIN_TOKEN_PREFIX);
    catalog.create_admin_token(&id, name, &silo_crypto::hash_token(token.expose_secret()))?;
    Ok((id, token))
}

/// Another admin token, made by `actor` (an admin token's audit identity), audited on the
/// platform's chain. The token is in the answer and nowhere else.
pub async fn create(
    state: &AppState,
    actor: &str,
    meta: &RequestMeta,
    name: String,
) -> Result<api::AdminTokenCreated, ApiError> {
    let n = name.clone();
    let (id, token) = state.catalog.blocking(move |c| mint(c, &n)).await?;
    state
        .audit(
            AuditRecord::new(None, actor, AuditAction::AdminTokenCreated, meta)
                .target(format!("admin:{id}"))
                .after(json!({ "name": name })),
        )
        .await?;
    Ok(api::AdminTokenCreated {
        id,
        name,
        token: token.expose_secret().to_owned(),
    })
}

/// Every admin token, without secrets.
pub async fn list(state: &AppState) -> Result<api::AdminTokenList, ApiError> {
    let tokens = state.catalog.blocking(|c| c.admin_tokens()).await?;
    Ok(api::AdminTokenList {
        admin_tokens: tokens
            .into_iter()
            .map(|t| api::AdminToken {
                id: t.id,
                name: t.name,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
            })
            .collect(),
    })
}

/// Revokes a token (the catalog refuses the last live one), audited.
pub async fn revoke(
    state: &AppState,
    actor: &str,
    meta: &RequestMeta,
    id: String,
) -> Result<(), ApiError> {
    let target = id.clone();
    state
        .catalog
        .blocking(move |c| c.revoke_admin_token(&target))
        .await?;
    state
        .audit(
            AuditRecord::new(None, actor, AuditAction::AdminTokenRevoked, meta)
                .target(format!("admin:{id}")),
        )
        .await
}
