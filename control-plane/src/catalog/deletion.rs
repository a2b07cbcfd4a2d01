//! Scheduled deletion: schedule, restore, find what is due, shred, purge, certify.

use rusqlite::{OptionalExtension, params};
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;

use super::{Catalog, CatalogError, Result, now_unix};

/// What purging a tenant's rows removed, for its certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Purged {
    pub users: usize,
    pub memberships: usize,
    pub sessions: usize,
    pub api_keys: usize,
    pub invites: usize,
}

impl Catalog {
    /// `active`/`suspended` → `deleting`, destroyed after `delete_after`. A certificate token
    /// (its hash) is recorded for whoever asked. Returns the previous status.
    pub fn schedule_deletion(
        &self,
        tenant: TenantId,
        delete_after: i64,
        certificate_token_hash: &[u8; 32],
    ) -> Result<TenantStatus> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = tenant.to_string();
        let from: String = tx
            .query_row("SELECT status FROM tenants WHERE id = ?1", [&t], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(CatalogError::NotFound("no such tenant"))?;
        let from: TenantStatus = from
            .parse()
            .map_err(|_| CatalogError::Corrupt("status".to_owned()))?;
        if from == TenantStatus::Deleting {
            return Err(CatalogError::Conflict(
                "the tenant is already scheduled for deletion".to_owned(),
            ));
        }
        if !from.can_become(TenantStatus::Deleting) {
            return Err(CatalogError::Conflict(format!(
                "a {from} tenant cannot be deleted"
            )));
        }
        tx.execute(
            "UPDATE tenants SET status = 'deleting', delete_after = ?2,
                    deletion_requested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1",
            params![t, delete_after],
        )?;
        tx.execute(
            "INSERT INTO deletion_certificates (token_hash, tenant_id) VALUES (?1, ?2)",
            params![&certificate_token_hash[..], t],
        )?;
        tx.commit()?;
        Ok(from)
    }

    /// Undoes a scheduled deletion within its grace period: `deleting` → `active`.
    pub fn restore_tenant(&self, tenant: TenantId) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = tenant.to_string();
        let n = tx.execute(
            "UPDATE tenants SET status = 'active', delete_after = NULL, deletion_requested_at = NULL,
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1 AND status = 'deleting' AND delete_after > ?2",
            params![t, now_unix()],
        )?;
        if n == 0 {
            return Err(CatalogError::Conflict(
                "only a tenant scheduled for deletion, within its grace period, can be restored"
                    .to_owned(),
            ));
        }
        tx.execute(
            "DELETE FROM deletion_certificates WHERE tenant_id = ?1 AND document IS NULL",
            [&t],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Tenants whose grace period is over (or whose destruction was interrupted).
    pub fn due_deletions(&self) -> Result<Vec<(TenantId, String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, coalesce(deletion_requested_at, '') FROM tenants
             WHERE status = 'deleting' AND delete_after <= ?1 ORDER BY delete_after",
        )?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([now_unix()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, name, at)| {
                Ok((
                    id.parse()
                        .map_err(|_| CatalogError::Corrupt(format!("tenant id {id:?}")))?,
                    name,
                    at,
                ))
            })
            .collect()
    }

    /// Crypto-shredding, step 1: destroys the sealed DB token (and any pending one). After
    /// this no one can read the database file, backups included. Idempotent.
    pub fn shred_db_token(&self, tenant: TenantId) -> Result<()> {
        self.lock().execute(
            "UPDATE tenants SET db_token = X'', db_token_next = NULL WHERE id = ?1 AND status = 'deleting'",
            [tenant.to_string()],
        )?;
        Ok(())
    }

    /// Last step: removes every row of the tenant (accounts that belong to it alone
    /// included; audit events stay) and stores the signed certificate, in one transaction.
    pub fn purge_tenant(
        &self,
        tenant: TenantId,
        certificate: impl FnOnce(&Purged) -> String,
    ) -> Result<Purged> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = tenant.to_string();
        let count = |sql: &str| -> Result<usize> {
            Ok(usize::try_from(tx.query_row(sql, [&t], |r| r.get::<_, i64>(0))?).unwrap_or(0))
        };
        let own_users: Vec<(String, String)> = tx
            .prepare(
                "SELECT u.id, u.email FROM users u JOIN memberships m ON m.user_id = u.id
                 WHERE m.tenant_id = ?1 AND NOT EXISTS
                     (SELECT 1 FROM memberships o WHERE o.user_id = u.id AND o.tenant_id != ?1)",
            )?
            .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let purged = Purged {
            users: own_users.len(),
            memberships: count("SELECT count(*) FROM memberships WHERE tenant_id = ?1")?,
            sessions: count("SELECT count(*) FROM sessions WHERE tenant_id = ?1")?,
            api_keys: count("SELECT count(*) FROM api_keys WHERE tenant_id = ?1")?,
            invites: count("SELECT count(*) FROM invites WHERE tenant_id = ?1")?,
        };
        for (id, email) in &own_users {
            tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
            tx.execute(
                "DELETE FROM login_failures WHERE key = ?1",
                [format!("email:{email}")],
            )?;
        }
        // Memberships, sessions (and their refresh tokens), keys, invites and migration
        // failures go with the tenant row (ON DELETE CASCADE).
        tx.execute(
            "DELETE FROM tenants WHERE id = ?1 AND status = 'deleting'",
            [&t],
        )?;
        tx.execute(
            "UPDATE deletion_certificates SET document = ?2 WHERE tenant_id = ?1",
            params![t, certificate(&purged)],
        )?;
        tx.commit()?;
        Ok(purged)
    }

    /// The certificate for a token: (tenant id, document once deletion is complete).
    pub fn deletion_certificate(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<(String, Option<String>)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT tenant_id, document FROM deletion_certificates WHERE token_hash = ?1",
                [&token_hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}
