//! Audit events: appended with their hash link and a signed head, in one transaction;
//! read back for listing and verification. The table refuses UPDATE and DELETE.

use rusqlite::{OptionalExtension, params};
use silo_crypto::Keyring;
use silo_tenant_runtime::TenantId;

use super::chain::{AuditRecord, GENESIS, chain_of, event_hash, head_mac};
use super::{Catalog, Result, Touches};

/// An event as stored: exactly the fields its hash covers, plus id and links.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredAuditEvent {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub before: Option<String>,
    pub after: Option<String>,
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

pub struct AuditHead {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub mac: Vec<u8>,
    pub mac_key_id: String,
}

/// Filters for listing a tenant's events.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actions: Vec<String>,
    /// Only events with an id greater than this (pagination cursor).
    pub after_id: Option<i64>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: i64,
}

const COLUMNS: &str = "id, tenant_id, seq, at, actor, action, target, ip, user_agent, request_id, outcome, before, after, prev_hash, hash";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredAuditEvent> {
    Ok(StoredAuditEvent {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        seq: r.get(2)?,
        at: r.get(3)?,
        actor: r.get(4)?,
        action: r.get(5)?,
        target: r.get(6)?,
        ip: r.get(7)?,
        user_agent: r.get(8)?,
        request_id: r.get(9)?,
        outcome: r.get(10)?,
        before: r.get(11)?,
        after: r.get(12)?,
        prev_hash: r.get(13)?,
        hash: r.get(14)?,
    })
}

impl Catalog {
    /// Appends one event to its chain and re-signs the chain's head, atomically.
    pub fn append_audit(&self, keyring: &Keyring, rec: &AuditRecord) -> Result<i64> {
        let chain = chain_of(rec.tenant);
        // The audit log is no credential's source: nothing cached goes stale.
        let mut conn = self.lock_touching(Touches::Nothing);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (head_seq, head_hash): (i64, Vec<u8>) = tx
            .query_row(
                "SELECT seq, hash FROM audit_heads WHERE chain = ?1",
                [&chain],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, GENESIS.to_vec()));
        let at: String = tx.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
            r.get(0)
        })?;
        let mut event = StoredAuditEvent {
            id: 0,
            tenant_id: rec.tenant.map(|t| t.to_string()),
            seq: head_seq + 1,
            at,
            actor: rec.actor.clone(),
            action: rec.action.as_str().to_owned(),
            target: rec.target.clone(),
            ip: rec.meta.ip.clone(),
            user_agent: rec.meta.user_agent.clone(),
            request_id: rec.meta.request_id.clone(),
            outcome: rec.outcome.as_str().to_owned(),
            before: rec.before.as_ref().map(ToString::to_string),
            after: rec.after.as_ref().map(ToString::to_string),
            prev_hash: head_hash,
            hash: Vec::new(),
        };
        event.hash = event_hash(&event.prev_hash, &event).to_vec();
        tx.execute(
            "INSERT INTO audit_events (tenant_id, seq, at, actor, action, target, ip, user_agent, request_id, outcome, before, after, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                event.tenant_id, event.seq, event.at, event.actor, event.action, event.target, event.ip,
                event.user_agent, event.request_id, event.outcome, event.before, event.after, event.prev_hash, event.hash
            ],
        )?;
        let id = tx.last_insert_rowid();
        let key_id = keyring.primary_id();
        let mac = head_mac(keyring, key_id, &chain, event.seq, &event.hash)
            .map_err(|e| super::CatalogError::Corrupt(format!("sign audit head: {e}")))?;
        tx.execute(
            "INSERT INTO audit_heads (chain, seq, hash, mac, mac_key_id) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac,
                 mac_key_id = excluded.mac_key_id",
            params![chain, event.seq, event.hash, mac, key_id.to_string()],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Appends the same event to the chain of every tenant the user belongs to (events
    /// about an account, such as a failed login, concern each of its tenants).
    pub fn append_audit_for_user(
        &self,
        keyring: &Keyring,
        user_id: &str,
        rec: &AuditRecord,
    ) -> Result<()> {
        let tenants: Vec<String> = {
            let conn = self.lock();
            let mut stmt = conn.prepare("SELECT tenant_id FROM memberships WHERE user_id = ?1")?;
            stmt.query_map([user_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for t in tenants {
            let mut r = rec.clone();
            r.tenant = t.parse().ok();
            if r.tenant.is_some() {
                self.append_audit(keyring, &r)?;
            }
        }
        Ok(())
    }

    /// A tenant's events, oldest first, by filter.
    pub fn audit_events(&self, tenant: TenantId, f: &AuditFilter) -> Result<Vec<StoredAuditEvent>> {
        let conn = self.lock();
        let actions = serde_json::to_string(&f.actions).unwrap_or_else(|_| "[]".to_owned());
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_events
             WHERE tenant_id = ?1 AND (?2 IS NULL OR id > ?2)
               AND (?3 = '[]' OR action IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR at >= ?4) AND (?5 IS NULL OR at < ?5)
             ORDER BY id LIMIT ?6"
        ))?;
        let rows = stmt.query_map(
            params![
                tenant.to_string(),
                f.after_id,
                actions,
                f.since,
                f.until,
                f.limit
            ],
            row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every event of one chain, in chain order, with the chain's signed head, read under
    /// one lock so no append can fall between the two.
    pub fn audit_chain_and_head(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<(Vec<StoredAuditEvent>, Option<AuditHead>)> {
        let conn = self.lock();
        let chain = chain_of(tenant);
        let events = {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit_events WHERE coalesce(tenant_id, '') = ?1 ORDER BY seq"
            ))?;
            let rows = stmt.query_map([&chain], row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let head = conn
            .query_row(
                "SELECT seq, hash, mac, mac_key_id FROM audit_heads WHERE chain = ?1",
                [&chain],
                |r| {
                    Ok(AuditHead {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                        mac: r.get(2)?,
                        mac_key_id: r.get(3)?,
                    })
                },
            )
            .optional()?;
        Ok((events, head))
    }

    /// Every event of one chain, in chain order.
    pub fn audit_chain(&self, tenant: Option<TenantId>) -> Result<Vec<StoredAuditEvent>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE coalesce(tenant_id, '') = ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map([chain_of(tenant)], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every chain there is or should be: any chain with events or a head, and every tenant
    /// that was ever provisioned (its chain must not be empty). `Err(text)` names a chain
    /// key that is not a tenant id (a tampered head or event).
    pub fn audit_chains(&self) -> Result<Vec<std::result::Result<Option<TenantId>, String>>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT coalesce(tenant_id, '') FROM audit_events
             UNION SELECT chain FROM audit_heads
             UNION SELECT id FROM tenants WHERE status != 'provisioning'
             ORDER BY 1",
        )?;
        let chains: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(chains
            .into_iter()
            .map(|c| {
                if c.is_empty() {
                    Ok(None)
                } else {
                    c.parse().map(Some).map_err(|_| c)
                }
            })
            .collect())
    }

    /// Purges the audit chains of deleted tenants whose newest event is older than
    /// `retention_secs`: the only way rows ever leave the audit log. In one transaction the
    /// append-only trigger is lifted, the chain and its head deleted, and the trigger
    /// restored, so no other deletion can slip in. Returns the tenants purged.
    pub fn purge_expired_audit(&self, retention_secs: i64) -> Result<Vec<String>> {
        let mut conn = self.lock_touching(Touches::Nothing);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let cutoff: String = tx.query_row(
            "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
            [format!("-{retention_secs} seconds")],
            |r| r.get(0),
        )?;
        let expired: Vec<String> = tx
            .prepare(
                "SELECT tenant_id FROM audit_events WHERE tenant_id IS NOT NULL
                   AND tenant_id NOT IN (SELECT id FROM tenants)
                 GROUP BY tenant_id HAVING max(at) < ?1",
            )?
            .query_map([&cutoff], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if expired.is_empty() {
            return Ok(expired);
        }
        tx.execute_batch("DROP TRIGGER audit_events_no_delete;")?;
        for t in &expired {
            tx.execute("DELETE FROM audit_events WHERE tenant_id = ?1", [t])?;
            tx.execute("DELETE FROM audit_heads WHERE chain = ?1", [t])?;
        }
        tx.execute_batch(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
             BEGIN
                 SELECT RAISE(ABORT, 'the audit log is append-only');
             END;",
        )?;
        tx.commit()?;
        Ok(expired)
    }

    /// Whether the tenant exists in the catalog (in any state but provisioning).
    pub fn tenant_exists(&self, tenant: TenantId) -> Result<bool> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1 AND status != 'provisioning')",
            [tenant.to_string()],
            |r| r.get(0),
        )?)
    }
}
