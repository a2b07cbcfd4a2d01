//! Two-factor state, failed-login counting, security events, and known networks.

use rusqlite::{OptionalExtension, params};
use silo_tenant_runtime::TenantId;

use super::{Catalog, Result, Touches, now_unix};

/// A user's TOTP state.
pub struct TotpState {
    /// The sealed secret: set by enrolment, kept while 2FA is on.
    pub sealed_secret: Option<Vec<u8>>,
    pub enabled: bool,
}

impl Catalog {
    pub fn totp_state(&self, user_id: &str) -> Result<TotpState> {
        let (sealed_secret, enabled) = self
            .lock()
            .query_row(
                "SELECT totp_secret, totp_enabled FROM users WHERE id = ?1",
                [user_id],
                |r| Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()?
            .unwrap_or((None, false));
        Ok(TotpState {
            sealed_secret,
            enabled,
        })
    }

    /// Stores a new, not yet confirmed secret. Refused (false) while 2FA is on.
    pub fn set_pending_totp(&self, user_id: &str, sealed: &[u8]) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE users SET totp_secret = ?2, totp_last_step = NULL WHERE id = ?1 AND totp_enabled = 0",
            params![user_id, sealed],
        )?;
        Ok(n == 1)
    }

    /// Turns 2FA on after a confirmed code, with fresh recovery codes (hashes).
    pub fn enable_totp(&self, user_id: &str, recovery_hashes: &[[u8; 32]]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("UPDATE users SET totp_enabled = 1 WHERE id = ?1", [user_id])?;
        tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
        for h in recovery_hashes {
            tx.execute(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (?1, ?2)",
                params![user_id, &h[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Accepts TOTP time step `step` for the user once: false if it (or a later step) was
    /// already used, so a code cannot be replayed within its window.
    pub fn accept_totp_step(&self, user_id: &str, step: u64) -> Result<bool> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // Only the replay guard's column, which no cached fact is read from: every 2FA
        // sign-in would otherwise make every tenant's cached credentials stale.
        let n = self.lock_touching(Touches::Nothing).execute(
            "UPDATE users SET totp_last_step = ?2
             WHERE id = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
            params![user_id, step],
        )?;
        Ok(n == 1)
    }

    /// Spends a recovery code. False if unknown or already used.
    pub fn use_recovery_code(&self, user_id: &str, code_hash: &[u8; 32]) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE recovery_codes SET used_at = ?3 WHERE user_id = ?1 AND code_hash = ?2 AND used_at IS NULL",
            params![user_id, &code_hash[..], now_unix()],
        )?;
        Ok(n == 1)
    }

    pub fn disable_totp(&self, user_id: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE users SET totp_enabled = 0, totp_secret = NULL, totp_last_step = NULL WHERE id = ?1",
            [user_id],
        )?;
        tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
        tx.commit()?;
        Ok(())
    }

    /// Records that the session just proved a second factor (starts the step-up window).
    pub fn mark_session_verified(&self, session_id: &str) -> Result<()> {
        let mut conn = self.lock();
        let tenant: Option<String> = conn
            .query_row(
                "UPDATE sessions SET verified_at = ?2 WHERE id = ?1 RETURNING tenant_id",
                params![session_id, now_unix()],
                |r| r.get(0),
            )
            .optional()?;
        // One session of that tenant.
        conn.touching_tenant(tenant.as_deref());
        Ok(())
    }

    pub fn set_require_2fa(&self, tenant: TenantId, on: bool) -> Result<()> {
        self.lock().execute(
            "UPDATE tenants SET require_2fa = ?2 WHERE id = ?1",
            params![tenant.to_string(), on],
        )?;
        Ok(())
    }

    /// Checks the lockout and, if not locked, counts this attempt as a failure *before* the
    /// credential is checked, in one transaction: parallel guesses cannot all slip past the
    /// check before any of them is counted. Returns the rows to forget if the attempt
    /// succeeds, or the seconds to wait if locked.
    pub fn begin_attempt(
        &self,
        keys: &[(String, i64)],
        window: i64,
    ) -> Result<std::result::Result<Vec<i64>, i64>> {
        let now = now_unix();
        let mut conn = self.lock_touching(Touches::Nothing);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM login_failures WHERE at <= ?1", [now - window])?;
        let mut wait: Option<i64> = None;
        for (key, max) in keys {
            let max = *max;
            let (count, oldest): (i64, Option<i64>) = tx.query_row(
                "SELECT count(*), min(at) FROM login_failures WHERE key = ?1 AND at > ?2",
                params![key, now - window],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if count >= max {
                let w = oldest.map_or(window, |o| (o + window - now).max(1));
                wait = Some(wait.map_or(w, |cur| cur.max(w)));
            }
        }
        if let Some(w) = wait {
            tx.commit()?;
            return Ok(Err(w));
        }
        let mut rows = Vec::with_capacity(keys.len());
        for (key, _) in keys {
            tx.execute(
                "INSERT INTO login_failures (key, at) VALUES (?1, ?2)",
                params![key, now],
            )?;
            rows.push(tx.last_insert_rowid());
        }
        tx.commit()?;
        Ok(Ok(rows))
    }

    /// The attempt succeeded: it was no failure after all.
    pub fn forget_attempt(&self, rows: &[i64]) -> Result<()> {
        let conn = self.lock_touching(Touches::Nothing);
        for row in rows {
            conn.execute("DELETE FROM login_failures WHERE rowid = ?1", [row])?;
        }
        Ok(())
    }

    pub fn clear_login_failures(&self, key: &str) -> Result<()> {
        self.lock_touching(Touches::Nothing)
            .execute("DELETE FROM login_failures WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Forgets every counted failure of an account (`email:` and `pair:` keys): an
    /// operator's unlock. Answers how many were forgotten.
    pub fn unlock_account(&self, email: &str) -> Result<usize> {
        let pairs = format!("pair:{email}|");
        Ok(self.lock_touching(Touches::Nothing).execute(
            "DELETE FROM login_failures WHERE key = ?1 OR substr(key, 1, length(?2)) = ?2",
            params![format!("email:{email}"), pairs],
        )?)
    }

    /// Whether the user has signed in from `network` before.
    pub fn network_known(&self, user_id: &str, network: &str) -> Result<bool> {
        Ok(self
            .lock_touching(Touches::Nothing)
            .query_row(
                "SELECT 1 FROM user_networks WHERE user_id = ?1 AND network = ?2",
                params![user_id, network],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Remembers that the user signed in from `network`. True when the network is new *and*
    /// the user had signed in from somewhere else before (a first sign-in is not news).
    pub fn note_network(&self, user_id: &str, network: &str) -> Result<bool> {
        let mut conn = self.lock_touching(Touches::Nothing);
        let tx = conn.transaction()?;
        let known: i64 = tx.query_row(
            "SELECT count(*) FROM user_networks WHERE user_id = ?1",
            [user_id],
            |r| r.get(0),
        )?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO user_networks (user_id, network) VALUES (?1, ?2)",
            params![user_id, network],
        )?;
        tx.commit()?;
        Ok(known > 0 && inserted == 1)
    }
}
