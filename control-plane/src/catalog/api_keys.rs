//! API keys: stored as SHA-256 hashes, found by their public prefix.

use rusqlite::{OptionalExtension, params};
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;

use super::{Catalog, CatalogError, Result, Touches, now_unix};
use silo_types::Role;

pub struct NewApiKey {
    pub id: String,
    pub tenant: TenantId,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub key_hash: [u8; 32],
    /// Space-separated scope names.
    pub scopes: String,
    /// JSON array of CIDRs, or `None` for anywhere.
    pub allowed_ips: Option<String>,
    pub expires_at: Option<i64>,
}

/// A key as the API shows it (never its secret): the catalog reads it in that shape.
pub use silo_api::ApiKey as ApiKeyRow;

/// What authenticating with a key needs, read fresh (or from the credential cache, which
/// holds it only while the catalog is unchanged).
#[derive(Clone)]
pub struct ApiKeyAuth {
    pub id: String,
    pub tenant: TenantId,
    pub user_id: String,
    pub email: String,
    pub key_hash: Vec<u8>,
    pub scopes: String,
    pub allowed_ips: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub last_used_at: Option<i64>,
    /// The maker's role now; `None` if they are no longer a member.
    pub role: Option<Role>,
    pub tenant_status: TenantStatus,
    /// The tenant requires 2FA and the maker has none: the key is held back.
    pub blocked_by_2fa_rule: bool,
    /// When it was read: the credential cache keeps it while this is current.
    pub stamp: super::Stamp,
}

impl Catalog {
    pub fn create_api_key(&self, key: &NewApiKey) -> Result<()> {
        self.lock_touching(Touches::Tenant(key.tenant)).execute(
            "INSERT INTO api_keys (id, tenant_id, user_id, name, prefix, key_hash, scopes, allowed_ips, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                key.id,
                key.tenant.to_string(),
                key.user_id,
                key.name,
                key.prefix,
                &key.key_hash[..],
                key.scopes,
                key.allowed_ips,
                key.expires_at
            ],
        )?;
        Ok(())
    }

    /// The tenant's live keys (not revoked), or only those `made_by` one user.
    pub fn api_keys(&self, tenant: TenantId, made_by: Option<&str>) -> Result<Vec<ApiKeyRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, prefix, scopes, expires_at, last_used_at, allowed_ips, user_id, created_at
             FROM api_keys WHERE tenant_id = ?1 AND revoked_at IS NULL AND (?2 IS NULL OR user_id = ?2)
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map(params![tenant.to_string(), made_by], |r| {
            let scopes: String = r.get(3)?;
            let ips: Option<String> = r.get(6)?;
            Ok(ApiKeyRow {
                id: r.get(0)?,
                name: r.get(1)?,
                prefix: r.get(2)?,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                expires_at: r.get(4)?,
                last_used_at: r.get(5)?,
                allowed_ips: ips.and_then(|j| serde_json::from_str(&j).ok()),
                user_id: r.get(7)?,
                created_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a key of the tenant (only one `made_by` that user, if given). False if there
    /// is no such live key.
    pub fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: &str,
        made_by: Option<&str>,
    ) -> Result<bool> {
        let n = self.lock_touching(Touches::Tenant(tenant)).execute(
            "UPDATE api_keys SET revoked_at = ?3
             WHERE id = ?1 AND tenant_id = ?2 AND revoked_at IS NULL AND (?4 IS NULL OR user_id = ?4)",
            params![id, tenant.to_string(), now_unix(), made_by],
        )?;
        Ok(n == 1)
    }

    pub fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyAuth>> {
        let conn = self.lock();
        let row = conn
            .prepare_cached(
                "SELECT k.id, k.tenant_id, k.user_id, u.email, k.key_hash, k.scopes, k.allowed_ips,
                        k.expires_at, k.revoked_at IS NOT NULL, k.last_used_at, m.role, t.status,
                        t.require_2fa AND NOT u.totp_enabled
                 FROM api_keys k
                 JOIN users u ON u.id = k.user_id
                 JOIN tenants t ON t.id = k.tenant_id
                 LEFT JOIN memberships m ON m.tenant_id = k.tenant_id AND m.user_id = k.user_id
                 WHERE k.prefix = ?1",
            )?
            .query_row([prefix], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ),
                    (
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ),
                    (
                        r.get::<_, Option<i64>>(7)?,
                        r.get::<_, bool>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                    ),
                    (
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, bool>(12)?,
                    ),
                ))
            })
            .optional()?;
        let Some((
            (id, tenant, user_id, email),
            (key_hash, scopes, allowed_ips),
            (expires_at, revoked, last_used_at),
            (role, status, blocked_by_2fa_rule),
        )) = row
        else {
            return Ok(None);
        };
        let tenant: TenantId = tenant
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("tenant id {tenant:?}")))?;
        // Still under the lock of the read: no write falls between the two.
        let stamp = conn.stamp(tenant);
        Ok(Some(ApiKeyAuth {
            id,
            tenant,
            user_id,
            email,
            key_hash,
            scopes,
            allowed_ips,
            expires_at,
            revoked,
            last_used_at,
            role: role
                .map(|r| {
                    r.parse()
                        .map_err(|_| CatalogError::Corrupt(format!("role {r:?}")))
                })
                .transpose()?,
            tenant_status: status
                .parse()
                .map_err(|_| CatalogError::Corrupt(format!("status {status:?}")))?,
            blocked_by_2fa_rule,
            stamp,
        }))
    }

    /// Notes when the key was last used. A cached key is not made stale by it: its row's
    /// copy of this one column is only a hint of when to write it next.
    pub fn touch_api_key(&self, id: &str, now: i64) -> Result<()> {
        self.lock_touching(Touches::Nothing).execute(
            "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }
}
