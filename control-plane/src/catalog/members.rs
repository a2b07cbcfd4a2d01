//! Memberships, roles and invitations.

use rusqlite::{OptionalExtension, params};
use silo_tenant_runtime::TenantId;

use super::{Catalog, CatalogError, Result, Touches, now_unix};
use silo_types::Role;

/// A member as the API shows it: the catalog reads it in that shape.
pub use silo_api::Member as MemberRow;

/// Who accepts an invitation.
pub enum Joiner<'a> {
    New {
        user_id: &'a str,
        password_hash: &'a str,
    },
    /// An existing account, already authenticated by the caller.
    Existing { user_id: &'a str },
}

pub struct InviteRow {
    pub tenant: TenantId,
    pub email: String,
    pub role: Role,
}

fn role_of(s: String) -> Result<Role> {
    s.parse()
        .map_err(|_| CatalogError::Corrupt(format!("role {s:?}")))
}

impl Catalog {
    /// The account with this email, whatever state its tenants are in: (id, password hash,
    /// 2FA on).
    pub fn user_by_email(&self, email: &str) -> Result<Option<(String, String, bool)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, password_hash, totp_enabled FROM users WHERE email = ?1",
                [email],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    pub fn members(&self, tenant: TenantId) -> Result<Vec<MemberRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT u.id, u.email, m.role FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.tenant_id = ?1 ORDER BY m.created_at, u.email",
        )?;
        let rows = stmt.query_map([tenant.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (user_id, email, role) = r?;
            Ok(MemberRow {
                user_id,
                email,
                role: role_of(role)?,
            })
        })
        .collect()
    }

    /// Records an invitation (its token only as a hash). Refuses to invite someone who is
    /// already a member.
    pub fn create_invite(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
        // A user id, or `None` when a platform operator invites (attributed elsewhere).
        invited_by: Option<&str>,
        token_hash: &[u8; 32],
        ttl_secs: i64,
    ) -> Result<()> {
        // An invitation: no cached fact is read from it.
        let mut conn = self.lock_touching(Touches::Nothing);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let member: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
                            WHERE m.tenant_id = ?1 AND u.email = ?2)",
            params![tenant.to_string(), email],
            |r| r.get(0),
        )?;
        if member {
            return Err(CatalogError::Conflict(
                "that person is already a member of this tenant".to_owned(),
            ));
        }
        tx.execute(
            "INSERT INTO invites (token_hash, tenant_id, email, role, invited_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &token_hash[..],
                tenant.to_string(),
                email,
                role.as_str(),
                invited_by,
                now_unix() + ttl_secs
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// An invitation that can still be accepted.
    pub fn open_invite(&self, token_hash: &[u8; 32]) -> Result<Option<InviteRow>> {
        let row = self
            .lock()
            .query_row(
                "SELECT i.tenant_id, i.email, i.role FROM invites i JOIN tenants t ON t.id = i.tenant_id
                 WHERE i.token_hash = ?1 AND i.accepted_at IS NULL AND i.expires_at > ?2
                   AND t.status = 'active'",
                params![&token_hash[..], now_unix()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()?;
        row.map(|(tenant, email, role)| {
            Ok(InviteRow {
                tenant: tenant
                    .parse()
                    .map_err(|_| CatalogError::Corrupt(format!("tenant id {tenant:?}")))?,
                email,
                role: role_of(role)?,
            })
        })
        .transpose()
    }

    /// Spends the invitation and makes the membership, in one transaction. `joiner` says
    /// who joins: a new account to create, or the existing account whose password (and
    /// second factor) the caller has just checked. Anything else — the email got an account
    /// meanwhile, or the account is not the one checked — is refused. Returns the user id.
    pub fn accept_invite(&self, token_hash: &[u8; 32], joiner: Joiner<'_>) -> Result<String> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let invite: Option<(String, String, String)> = tx
            .query_row(
                "SELECT tenant_id, email, role FROM invites
                 WHERE token_hash = ?1 AND accepted_at IS NULL AND expires_at > ?2",
                params![&token_hash[..], now_unix()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((tenant, email, role)) = invite else {
            return Err(CatalogError::NotFound(
                "the invitation is not valid, was already used, or has expired",
            ));
        };
        let existing: Option<String> = tx
            .query_row("SELECT id FROM users WHERE email = ?1", [&email], |r| {
                r.get(0)
            })
            .optional()?;
        let user_id = match (existing, joiner) {
            (Some(id), Joiner::Existing { user_id }) if id == user_id => id,
            (
                None,
                Joiner::New {
                    user_id,
                    password_hash,
                },
            ) => {
                tx.execute(
                    "INSERT INTO users (id, email, password_hash) VALUES (?1, ?2, ?3)",
                    params![user_id, email, password_hash],
                )?;
                user_id.to_owned()
            }
            _ => {
                return Err(CatalogError::Conflict(
                    "the account for this email changed while accepting; try again".to_owned(),
                ));
            }
        };
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO memberships (tenant_id, user_id, role) VALUES (?1, ?2, ?3)",
            params![tenant, user_id, role],
        )?;
        if inserted == 0 {
            return Err(CatalogError::Conflict(
                "you are already a member of this tenant".to_owned(),
            ));
        }
        tx.execute(
            "UPDATE invites SET accepted_at = ?2 WHERE token_hash = ?1",
            params![&token_hash[..], now_unix()],
        )?;
        tx.commit()?;
        // An invitation, and a membership of its tenant (plus, for a new account, a user
        // nothing cached names yet).
        conn.touching_tenant(Some(&tenant));
        Ok(user_id)
    }

    /// Changes a member's role. Only an owner grants, changes or removes owner, and the last
    /// owner stays an owner. Returns the previous role.
    pub fn set_role(
        &self,
        tenant: TenantId,
        target: &str,
        role: Role,
        actor_role: Role,
    ) -> Result<Role> {
        // One membership of this tenant.
        let mut conn = self.lock_touching(Touches::Tenant(tenant));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = current_role(&tx, tenant, target)?;
        check_owner_rules(&tx, tenant, current, Some(role), actor_role)?;
        tx.execute(
            "UPDATE memberships SET role = ?3 WHERE tenant_id = ?1 AND user_id = ?2",
            params![tenant.to_string(), target, role.as_str()],
        )?;
        tx.commit()?;
        Ok(current)
    }

    /// Removes a member: the membership goes, the member's sessions and API keys in this
    /// tenant stop working at once, and an account left with no tenant is deleted.
    pub fn remove_member(&self, tenant: TenantId, target: &str, actor_role: Role) -> Result<Role> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = current_role(&tx, tenant, target)?;
        check_owner_rules(&tx, tenant, current, None, actor_role)?;
        let t = tenant.to_string();
        tx.execute(
            "DELETE FROM memberships WHERE tenant_id = ?1 AND user_id = ?2",
            params![t, target],
        )?;
        tx.execute(
            "UPDATE sessions SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                    revoked_reason = 'member_removed'
             WHERE tenant_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
            params![t, target],
        )?;
        tx.execute(
            "UPDATE api_keys SET revoked_at = ?3 WHERE tenant_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
            params![t, target, now_unix()],
        )?;
        tx.execute(
            "DELETE FROM users WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM memberships WHERE user_id = ?1)",
            [target],
        )?;
        tx.commit()?;
        Ok(current)
    }
}

fn current_role(tx: &rusqlite::Transaction<'_>, tenant: TenantId, user: &str) -> Result<Role> {
    let role: Option<String> = tx
        .query_row(
            "SELECT role FROM memberships WHERE tenant_id = ?1 AND user_id = ?2",
            params![tenant.to_string(), user],
            |r| r.get(0),
        )
        .optional()?;
    role_of(role.ok_or(CatalogError::NotFound("no such member in this tenant"))?)
}

/// `new` is the role the member would get, or `None` for removal.
fn check_owner_rules(
    tx: &rusqlite::Transaction<'_>,
    tenant: TenantId,
    current: Role,
    new: Option<Role>,
    actor: Role,
) -> Result<()> {
    let touches_owner = current == Role::Owner || new == Some(Role::Owner);
    if touches_owner && actor != Role::Owner {
        return Err(CatalogError::Forbidden(
            "only an owner can grant, change or remove the owner role",
        ));
    }
    if current == Role::Owner && new != Some(Role::Owner) {
        let owners: i64 = tx.query_row(
            "SELECT count(*) FROM memberships WHERE tenant_id = ?1 AND role = 'owner'",
            [tenant.to_string()],
            |r| r.get(0),
        )?;
        if owners <= 1 {
            return Err(CatalogError::Conflict(
                "this is the tenant's last owner: make another member owner first".to_owned(),
            ));
        }
    }
    Ok(())
}
