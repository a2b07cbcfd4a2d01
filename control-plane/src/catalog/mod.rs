//! The catalog: the control plane's own SQLite database (`<data-dir>/catalog.db`).
//!
//! What we store: tenants (status, placement, the *sealed* DB token, schema version),
//! users (email, argon2id hash, session version), memberships with roles, sessions, and
//! refresh tokens as SHA-256 hashes. Never a tenant's rows, never a secret in clear.
//!
//! One connection behind a mutex: every call runs on a blocking thread
//! ([`Catalog::blocking`]), holds the lock for one short statement or transaction, and
//! never across an `.await`. WAL and `synchronous = FULL`: a committed change survives a
//! crash of the process or the machine.

use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use silo_provisioner::migrations::{CATALOG_DIR, MigrationSet};
use silo_provisioner::{Ledger, ProvisionError, TenantStatus};
use silo_tenant_runtime::TenantId;

pub use epochs::Stamp;
use epochs::{Epochs, Touches};
use silo_types::Role;

mod admin;
mod api_keys;
mod audit;
pub mod chain;
mod deletion;
mod epochs;
mod members;
mod security;

pub use admin::{AdminTokenRow, MigrationFailure, SealedDbTokens, TenantSummary};
pub use api_keys::{ApiKeyAuth, ApiKeyRow, NewApiKey};
pub use audit::{AuditFilter, AuditHead, StoredAuditEvent};
pub use deletion::Purged;
pub use members::{InviteRow, Joiner, MemberRow};
pub use security::TotpState;

/// Bookkeeping table of applied catalog migrations.
const CATALOG_MIGRATIONS_TABLE: &str = "schema_migrations";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("that email address already has an account")]
    EmailTaken,
    /// A rule of the domain refused the change; the message is for the caller.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("catalog: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("catalog migrations: {0}")]
    Migration(#[from] silo_provisioner::MigrationError),
    #[error("catalog holds an invalid value: {0}")]
    Corrupt(String),
    #[error("catalog task did not finish: {0}")]
    Join(String),
    #[error("catalog key: {0}")]
    Key(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Cheap to clone; all clones share the one connection.
#[derive(Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    /// Bumped after every use of the connection that changed a row, for what it touched.
    /// Whoever keeps a copy of something read here (the credential cache) checks its
    /// [`Stamp`] to know the copy is still what the catalog holds.
    epochs: Arc<Epochs>,
}

/// The locked catalog connection. On release, bumps the epochs of what the writes through
/// it may have changed, if they changed anything (SQLite's running count of changed rows
/// moved): the whole catalog's unless the writer said it touched less
/// ([`CatalogGuard::touching`]).
pub(crate) struct CatalogGuard<'a> {
    conn: MutexGuard<'a, Connection>,
    changes_before: u64,
    touches: Touches,
    epochs: &'a Epochs,
}

impl CatalogGuard<'_> {
    /// Says what the writes through this guard may change (see [`Touches`]); without it,
    /// anything. Say it only where it is plain from the statements.
    pub(crate) fn touching(&mut self, touches: Touches) {
        self.touches = touches;
    }

    /// [`CatalogGuard::touching`] the tenant a statement named (`RETURNING tenant_id`), if
    /// it named one: a tenant id that does not parse leaves the scope at everything.
    pub(crate) fn touching_tenant(&mut self, tenant_id: Option<&str>) {
        if let Some(tenant) = tenant_id.and_then(|t| t.parse().ok()) {
            self.touching(Touches::Tenant(tenant));
        }
    }

    /// When what is read under this lock was read, for the caches (see [`Stamp`]).
    pub(crate) fn stamp(&self, tenant: TenantId) -> Stamp {
        self.epochs.stamp(tenant)
    }
}

impl std::ops::Deref for CatalogGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for CatalogGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for CatalogGuard<'_> {
    fn drop(&mut self) {
        // Before the lock is released: no one reads the catalog between the write and the
        // epoch that announces it.
        if self.conn.total_changes() != self.changes_before {
            self.epochs.bump(self.touches);
        }
    }
}

/// What signup records before any file exists: the provisioning intent.
pub struct NewSignup {
    pub tenant: TenantId,
    pub tenant_name: String,
    pub db_id: String,
    pub sealed_db_token: Vec<u8>,
    pub user_id: String,
    pub email: String,
    pub password_hash: String,
}

/// A user's credentials and membership, for login.
pub struct LoginRow {
    pub user_id: String,
    pub password_hash: String,
    pub session_version: i64,
    pub tenant: TenantId,
    pub totp_enabled: bool,
    /// Active, suspended, deleting: signing in needs active.
    pub tenant_status: TenantStatus,
}

/// Everything a request needs to know about its access token's session, read fresh (or
/// from the credential cache, which holds it while its stamp is current).
#[derive(Clone)]
pub struct SessionRow {
    pub role: Role,
    pub email: String,
    pub tenant_status: TenantStatus,
    pub revoked: bool,
    /// The user's session version now, and the one the session was made under.
    pub user_session_version: i64,
    pub session_session_version: i64,
    pub expires_at: i64,
    pub totp_enabled: bool,
    /// When this session last proved a second factor.
    pub verified_at: Option<i64>,
    pub tenant_requires_2fa: bool,
    /// When it was read: the credential cache keeps it while this is current.
    pub stamp: Stamp,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub plan: String,
    pub placement: String,
    pub schema_version: i64,
    pub created_at: String,
    pub require_2fa: bool,
}

/// A session just started.
pub struct SessionStart {
    pub session_id: String,
    pub role: Role,
    /// The user's session version, carried in the access token as `sv`.
    pub session_version: i64,
}

/// What presenting a refresh token did.
pub enum RefreshOutcome {
    /// The token was valid and is now spent; `new_hash` is stored in its place.
    Rotated {
        session_id: String,
        user_id: String,
        tenant: TenantId,
        role: Role,
        session_version: i64,
    },
    /// The token had already been used: the whole session has been revoked.
    Reused {
        session_id: String,
        user_id: String,
        tenant: TenantId,
    },
    /// Unknown, expired, or its session is revoked or outdated.
    Invalid,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn parse_tenant(s: String) -> Result<TenantId> {
    s.parse()
        .map_err(|_| CatalogError::Corrupt(format!("tenant id {s:?}")))
}

fn parse_status(s: String) -> Result<TenantStatus> {
    s.parse()
        .map_err(|_| CatalogError::Corrupt(format!("tenant status {s:?}")))
}

/// A tenant status read from its column: a name the lifecycle does not know is a corrupt
/// row, reported as SQLite reports a value of the wrong type.
pub(crate) fn status_at(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<TenantStatus> {
    let text: String = row.get(idx)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The catalog's SQLCipher keys, derived from the master keys: the primary one's first.
/// The catalog holds emails, password hashes, audit rows and client addresses: a copy of the
/// data directory without the master key must not reveal them.
pub struct CatalogKeys {
    keys: Vec<secrecy::SecretBox<[u8; 32]>>,
}

impl CatalogKeys {
    pub fn from_keyring(keyring: &silo_crypto::Keyring) -> Result<Self> {
        let keys = keyring
            .key_ids()
            .map(|id| keyring.derive_key(id, CATALOG_KEY_LABEL))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| CatalogError::Key(e.to_string()))?;
        Ok(CatalogKeys { keys })
    }

    /// The key as SQLCipher takes a raw one (no PBKDF2): `x'<hex>'`. Secret.
    fn raw(key: &secrecy::SecretBox<[u8; 32]>) -> secrecy::SecretString {
        use secrecy::ExposeSecret as _;
        format!("x'{}'", hex::encode(key.expose_secret())).into()
    }
}

/// The label the catalog's key is derived under (see `Keyring::derive_key`).
pub const CATALOG_KEY_LABEL: &str = "catalog-db";

/// Keys `conn` and reads the schema: an error if the key does not open the file.
fn try_key(conn: &Connection, key: Option<&secrecy::SecretString>) -> rusqlite::Result<()> {
    use secrecy::ExposeSecret as _;
    if let Some(key) = key {
        // The statement holds the key: kept secret (zeroed when dropped).
        let statement: secrecy::SecretString =
            format!("PRAGMA key = \"{}\";", key.expose_secret()).into();
        silo_tenant_runtime::handle::key_connection(conn, &statement)?;
    }
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

/// Writes the open database `conn` into a new file at `path` under `key` and puts it in
/// place of the old one, atomically: a crash leaves the old file, or the new one, whole.
fn reencrypt(conn: Connection, path: &Path, key: &secrecy::SecretString) -> Result<()> {
    use secrecy::ExposeSecret as _;
    let fresh = path.with_extension("db.rekeying");
    let _ = std::fs::remove_file(&fresh);
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    conn.execute(
        "ATTACH DATABASE ?1 AS rekeyed KEY ?2",
        params![fresh.to_string_lossy(), key.expose_secret()],
    )?;
    conn.query_row("SELECT sqlcipher_export('rekeyed')", [], |_| Ok(()))?;
    conn.execute_batch("DETACH DATABASE rekeyed;")?;
    drop(conn);
    let io = |e: std::io::Error| CatalogError::Key(format!("re-keying the catalog: {e}"));
    std::fs::File::open(&fresh)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&fresh, path).map_err(io)?;
    for stale in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(stale));
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

impl Catalog {
    /// Opens (creating if needed) the catalog, encrypted under the primary key, and applies
    /// its migrations. A catalog under an earlier master key, or one written before the
    /// catalog was encrypted, is rewritten under the primary key first. Blocking.
    pub fn open(path: &Path, keys: &CatalogKeys) -> Result<Self> {
        let primary = keys
            .keys
            .first()
            .map(CatalogKeys::raw)
            .ok_or_else(|| CatalogError::Key("no master key".to_owned()))?;
        let mut conn = Connection::open(path)?;
        if try_key(&conn, Some(&primary)).is_err() {
            drop(conn);
            let earlier = keys.keys.iter().skip(1).map(CatalogKeys::raw);
            let found = earlier.map(Some).chain([None]).find_map(|key| {
                let conn = Connection::open(path).ok()?;
                try_key(&conn, key.as_ref())
                    .ok()
                    .map(|()| (conn, key.is_some()))
            });
            let Some((old, was_keyed)) = found else {
                return Err(CatalogError::Key(format!(
                    "{} cannot be read with the configured master key (nor an earlier one in \
                     --previous-master-keys): is this the right key for this data directory?",
                    path.display()
                )));
            };
            tracing::warn!(
                from = if was_keyed {
                    "an earlier master key"
                } else {
                    "plain SQLite"
                },
                "re-encrypting the catalog under the primary master key"
            );
            reencrypt(old, path, &primary)?;
            conn = Connection::open(path)?;
            try_key(&conn, Some(&primary))?;
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        MigrationSet::embedded(&CATALOG_DIR)?.apply(&mut conn, CATALOG_MIGRATIONS_TABLE)?;
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            epochs: Arc::new(Epochs::default()),
        })
    }

    fn lock(&self) -> CatalogGuard<'_> {
        // parking_lot: no poisoning. A panic while holding the lock cannot leave a
        // transaction open (rusqlite rolls back a dropped transaction), so the connection a
        // panicking holder left is still consistent.
        let conn = self.conn.lock();
        CatalogGuard {
            changes_before: conn.total_changes(),
            conn,
            touches: Touches::Everything,
            epochs: &self.epochs,
        }
    }

    /// The locked connection, for writes that change only what `touches` says.
    fn lock_touching(&self, touches: Touches) -> CatalogGuard<'_> {
        let mut guard = self.lock();
        guard.touching(touches);
        guard
    }

    /// No write that could have changed what was read under `stamp` has happened since.
    pub fn is_current(&self, stamp: &Stamp) -> bool {
        self.epochs.is_current(stamp)
    }

    /// Runs `f` on a blocking thread, inside the caller's span.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Catalog) -> Result<T> + Send + 'static,
    {
        let catalog = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&catalog)))
            .await
            .map_err(|e| CatalogError::Join(e.to_string()))?
    }

    /// The current time as the catalog writes it everywhere (RFC 3339 UTC, milliseconds).
    pub fn now_text(&self) -> Result<String> {
        Ok(self
            .lock()
            .query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?)
    }

    pub fn ping(&self) -> Result<()> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Records a signup's intent in one transaction: the tenant (`provisioning`, with its
    /// sealed DB token), its owner's account and membership. Concurrent signups with one
    /// email: the unique index lets exactly one through; the others get `EmailTaken`.
    pub fn insert_signup(&self, s: &NewSignup) -> Result<()> {
        // New rows only (a tenant, its first user and membership): nothing cached names them.
        let mut conn = self.lock_touching(Touches::Tenant(s.tenant));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE email = ?1)",
            [&s.email],
            |r| r.get(0),
        )?;
        if taken {
            return Err(CatalogError::EmailTaken);
        }
        tx.execute(
            "INSERT INTO tenants (id, name, status, db_id, db_token) VALUES (?1, ?2, 'provisioning', ?3, ?4)",
            params![s.tenant.to_string(), s.tenant_name, s.db_id, s.sealed_db_token],
        )?;
        tx.execute(
            "INSERT INTO users (id, email, password_hash) VALUES (?1, ?2, ?3)",
            params![s.user_id, s.email, s.password_hash],
        )?;
        tx.execute(
            "INSERT INTO memberships (tenant_id, user_id, role) VALUES (?1, ?2, 'owner')",
            params![s.tenant.to_string(), s.user_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The tenant's database id and sealed DB token.
    pub fn sealed_db_token(&self, tenant: TenantId) -> Result<Option<(String, Vec<u8>)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT db_id, db_token FROM tenants WHERE id = ?1",
                [tenant.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn tenant(&self, tenant: TenantId) -> Result<Option<TenantRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, name, status, plan, placement, schema_version, created_at, require_2fa
                 FROM tenants WHERE id = ?1",
                [tenant.to_string()],
                |r| {
                    Ok(TenantRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        status: status_at(r, 2)?,
                        plan: r.get(3)?,
                        placement: r.get(4)?,
                        schema_version: r.get(5)?,
                        created_at: r.get(6)?,
                        require_2fa: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// The account behind `email`, with the tenant to sign in to: `tenant` if given (and the
    /// user is a member), else the tenant the user joined first.
    pub fn find_login(&self, email: &str, tenant: Option<TenantId>) -> Result<Option<LoginRow>> {
        let row = self
            .lock()
            .query_row(
                "SELECT u.id, u.password_hash, u.session_version, m.tenant_id, u.totp_enabled,
                        t.status
                 FROM users u JOIN memberships m ON m.user_id = u.id
                 JOIN tenants t ON t.id = m.tenant_id
                 WHERE u.email = ?1 AND t.status != 'provisioning'
                   AND (?2 IS NULL OR m.tenant_id = ?2)
                 ORDER BY m.created_at LIMIT 1",
                params![email, tenant.map(|t| t.to_string())],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                        r.get(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        row.map(
            |(user_id, password_hash, session_version, tenant, totp_enabled, status)| {
                Ok(LoginRow {
                    user_id,
                    password_hash,
                    session_version,
                    tenant: parse_tenant(tenant)?,
                    totp_enabled,
                    tenant_status: status
                        .parse()
                        .map_err(|_| CatalogError::Corrupt("tenant status".to_owned()))?,
                })
            },
        )
        .transpose()
    }

    /// Starts a session with its first refresh token (stored as its hash).
    pub fn create_session(
        &self,
        user_id: &str,
        tenant: TenantId,
        refresh_hash: &[u8; 32],
        refresh_ttl_secs: i64,
        second_factor_verified: bool,
    ) -> Result<SessionStart> {
        // New rows of the tenant: nothing cached names them yet.
        let mut conn = self.lock_touching(Touches::Tenant(tenant));
        let tx = conn.transaction()?;
        let (sv, role): (i64, String) = tx.query_row(
            "SELECT u.session_version, m.role FROM users u
             JOIN memberships m ON m.user_id = u.id AND m.tenant_id = ?2
             WHERE u.id = ?1",
            params![user_id, tenant.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let role: Role = role
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("role {role:?}")))?;
        let session_id = hex::encode(silo_crypto::random_bytes::<16>());
        let now = now_unix();
        tx.execute(
            "INSERT INTO sessions (id, user_id, tenant_id, session_version, expires_at, verified_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                session_id,
                user_id,
                tenant.to_string(),
                sv,
                now + refresh_ttl_secs,
                second_factor_verified.then_some(now)
            ],
        )?;
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![&refresh_hash[..], session_id, now, now + refresh_ttl_secs],
        )?;
        tx.commit()?;
        Ok(SessionStart {
            session_id,
            role,
            session_version: sv,
        })
    }

    /// The session an access token names, with the user's current role, and the stamp the
    /// credential cache keeps it by. `None` if the session, user or membership is gone.
    pub fn session(
        &self,
        session_id: &str,
        user_id: &str,
        tenant: TenantId,
    ) -> Result<Option<SessionRow>> {
        let conn = self.lock();
        // Under the same lock as the read: no write falls between the two.
        let stamp = conn.stamp(tenant);
        let row = conn
            .prepare_cached(
                "SELECT m.role, u.email, t.status, s.revoked_at IS NOT NULL,
                        u.session_version, s.session_version, s.expires_at,
                        u.totp_enabled, s.verified_at, t.require_2fa
                 FROM sessions s
                 JOIN users u ON u.id = s.user_id
                 JOIN memberships m ON m.user_id = s.user_id AND m.tenant_id = s.tenant_id
                 JOIN tenants t ON t.id = s.tenant_id
                 WHERE s.id = ?1 AND s.user_id = ?2 AND s.tenant_id = ?3",
            )?
            .query_row(params![session_id, user_id, tenant.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    (
                        r.get::<_, bool>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, bool>(9)?,
                    ),
                ))
            })
            .optional()?;
        row.map(
            |(
                role,
                email,
                status,
                revoked,
                usv,
                ssv,
                expires_at,
                (totp_enabled, verified_at, tenant_requires_2fa),
            )| {
                Ok(SessionRow {
                    role: role
                        .parse()
                        .map_err(|_| CatalogError::Corrupt(format!("role {role:?}")))?,
                    email,
                    tenant_status: parse_status(status)?,
                    revoked,
                    user_session_version: usv,
                    session_session_version: ssv,
                    expires_at,
                    totp_enabled,
                    verified_at,
                    tenant_requires_2fa,
                    stamp,
                })
            },
        )
        .transpose()
    }

    /// Spends a refresh token and stores its successor, in one transaction. Presenting a
    /// token that was already spent revokes its whole session (the family): whoever holds
    /// either copy, legitimate or stolen, is signed out.
    pub fn rotate_refresh(
        &self,
        presented_hash: &[u8; 32],
        new_hash: &[u8; 32],
        refresh_ttl_secs: i64,
    ) -> Result<RefreshOutcome> {
        let now = now_unix();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                "SELECT r.session_id, r.expires_at, r.used_at IS NOT NULL, s.revoked_at IS NOT NULL,
                        s.user_id, s.tenant_id, s.session_version, u.session_version, m.role, t.status
                 FROM refresh_tokens r
                 JOIN sessions s ON s.id = r.session_id
                 JOIN users u ON u.id = s.user_id
                 JOIN memberships m ON m.user_id = s.user_id AND m.tenant_id = s.tenant_id
                 JOIN tenants t ON t.id = s.tenant_id
                 WHERE r.token_hash = ?1",
                [&presented_hash[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, String>(9)?,
                    ))
                },
            )
            .optional()?;
        let Some((session_id, expires_at, used, revoked, user_id, tenant, ssv, usv, role, status)) =
            row
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        if used {
            tx.execute(
                "UPDATE sessions SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        revoked_reason = 'refresh_token_reuse'
                 WHERE id = ?1 AND revoked_at IS NULL",
                [&session_id],
            )?;
            tx.commit()?;
            // Revoked whatever the tenant id says; if it does not parse, the scope stays at
            // everything.
            let tenant = parse_tenant(tenant)?;
            // A session of this tenant, nothing else.
            conn.touching(Touches::Tenant(tenant));
            return Ok(RefreshOutcome::Reused {
                session_id,
                user_id,
                tenant,
            });
        }
        let tenant = parse_tenant(tenant)?;
        if revoked
            || expires_at <= now
            || ssv != usv
            || parse_status(status)? == TenantStatus::Deleted
        {
            return Ok(RefreshOutcome::Invalid);
        }
        tx.execute(
            "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1",
            params![&presented_hash[..], now],
        )?;
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![&new_hash[..], session_id, now, now + refresh_ttl_secs],
        )?;
        // Each rotation extends the session's horizon: 7 days after the last use.
        tx.execute(
            "UPDATE sessions SET expires_at = ?2 WHERE id = ?1",
            params![session_id, now + refresh_ttl_secs],
        )?;
        tx.commit()?;
        conn.touching(Touches::Tenant(tenant));
        Ok(RefreshOutcome::Rotated {
            session_id,
            user_id,
            tenant,
            role: role
                .parse()
                .map_err(|_| CatalogError::Corrupt(format!("role {role:?}")))?,
            session_version: ssv,
        })
    }
}

impl Catalog {
    /// Ends one session (logout): its access and refresh tokens stop working at once.
    pub fn revoke_session(&self, session_id: &str, reason: &str) -> Result<()> {
        let mut conn = self.lock();
        let tenant: Option<String> = conn
            .query_row(
                "UPDATE sessions SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), revoked_reason = ?2
                 WHERE id = ?1 AND revoked_at IS NULL
                 RETURNING tenant_id",
                params![session_id, reason],
                |r| r.get(0),
            )
            .optional()?;
        // One session of that tenant.
        conn.touching_tenant(tenant.as_deref());
        Ok(())
    }

    pub fn password_hash(&self, user_id: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT password_hash FROM users WHERE id = ?1",
                [user_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a new password hash and bumps the user's session version: every session of
    /// the user, in every tenant, stops working at once.
    pub fn set_password(&self, user_id: &str, password_hash: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE users SET password_hash = ?2, session_version = session_version + 1 WHERE id = ?1",
            params![user_id, password_hash],
        )?;
        Ok(())
    }

    /// "Sign out everywhere": bumps the session version without changing the password.
    pub fn bump_session_version(&self, user_id: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE users SET session_version = session_version + 1 WHERE id = ?1",
            [user_id],
        )?;
        Ok(())
    }
}

/// Records tenant migrations not recorded yet (the first application of each is kept).
fn record_tenant_migrations(
    conn: &rusqlite::Connection,
    migrations: &[(u32, String, String)],
) -> rusqlite::Result<()> {
    if migrations.is_empty() {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO tenant_migrations (version, name, checksum) VALUES (?1, ?2, ?3)",
    )?;
    for (version, name, checksum) in migrations {
        insert.execute(params![version, name, checksum])?;
    }
    Ok(())
}

impl Catalog {
    /// The checksum of every tenant migration when it was first applied, by version.
    pub fn tenant_migration_checksums(&self) -> Result<std::collections::HashMap<u32, String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT version, checksum FROM tenant_migrations")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records tenant migrations applied (or found applied by an older silo), keeping the
    /// first record of each.
    pub fn record_tenant_migrations(&self, migrations: &[(u32, String, String)]) -> Result<()> {
        record_tenant_migrations(&self.lock(), migrations)?;
        Ok(())
    }
}

impl Ledger for Catalog {
    fn provisioning(&self) -> silo_provisioner::Result<Vec<TenantId>> {
        let conn = self.lock();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM tenants WHERE status = 'provisioning'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(ledger_err)?;
        ids.into_iter()
            .map(|s| parse_tenant(s).map_err(|e| ProvisionError::Ledger(e.to_string())))
            .collect()
    }

    fn is_provisioning(&self, tenant: TenantId) -> silo_provisioner::Result<bool> {
        self.lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1 AND status = 'provisioning')",
                [tenant.to_string()],
                |r| r.get(0),
            )
            .map_err(ledger_err)
    }

    fn mark_active(
        &self,
        tenant: TenantId,
        schema_version: u32,
        migrations: &[(u32, String, String)],
    ) -> silo_provisioner::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(ledger_err)?;
        let changed = tx
            .execute(
                "UPDATE tenants SET status = 'active', schema_version = ?2,
                        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1 AND status IN ('provisioning', 'active')",
                params![tenant.to_string(), schema_version],
            )
            .map_err(ledger_err)?;
        if changed != 1 {
            return Err(ProvisionError::Ledger(format!(
                "tenant {tenant} is no longer provisioning"
            )));
        }
        record_tenant_migrations(&tx, migrations).map_err(ledger_err)?;
        tx.commit().map_err(ledger_err)
    }

    fn migration_checksums(
        &self,
    ) -> silo_provisioner::Result<std::collections::HashMap<u32, String>> {
        self.tenant_migration_checksums()
            .map_err(|e| ProvisionError::Ledger(e.to_string()))
    }

    fn forget(&self, tenant: TenantId) -> silo_provisioner::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(ledger_err)?;
        let t = tenant.to_string();
        // The accounts this tenant's signup created: those with no other membership.
        let own_users: Vec<String> = tx
            .prepare(
                "SELECT user_id FROM memberships WHERE tenant_id = ?1
                 AND user_id NOT IN (SELECT user_id FROM memberships WHERE tenant_id != ?1)",
            )
            .and_then(|mut s| s.query_map([&t], |r| r.get(0))?.collect())
            .map_err(ledger_err)?;
        // Guarded: a tenant that is no longer provisioning is left alone, users and all.
        let removed = tx
            .execute(
                "DELETE FROM tenants WHERE id = ?1 AND status = 'provisioning'",
                [&t],
            )
            .map_err(ledger_err)?;
        if removed == 1 {
            for user in own_users {
                tx.execute("DELETE FROM users WHERE id = ?1", [user])
                    .map_err(ledger_err)?;
            }
        }
        tx.commit().map_err(ledger_err)
    }
}

fn ledger_err(e: rusqlite::Error) -> ProvisionError {
    ProvisionError::Ledger(e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keyring(keys: &[[u8; 32]]) -> silo_crypto::Keyring {
        let mut keys = keys.iter().map(|k| silo_crypto::MasterKey::from_bytes(*k));
        let primary = keys.next().unwrap();
        silo_crypto::Keyring::new(primary, keys.collect())
    }

    fn test_keys() -> CatalogKeys {
        CatalogKeys::from_keyring(&keyring(&[[7; 32]])).unwrap()
    }

    /// Issue 19: the migration failures were looked for by walking every active tenant;
    /// the plan now starts from the failures table and finds each tenant by its key.
    #[test]
    fn migration_failures_are_read_from_the_failures_not_the_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db"), &test_keys()).unwrap();
        let conn = catalog.lock();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                admin::MIGRATION_FAILURES_SQL
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(plan[0].contains(" f"), "outer loop: {plan:?}");
        assert!(
            plan.iter()
                .any(|p| p.starts_with("SEARCH t") && !p.contains("status")),
            "tenants by key: {plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.contains("tenants_status")),
            "{plan:?}"
        );
    }

    /// What a stolen copy of the data directory shows: no table, no email. A catalog
    /// written before encryption, or under an earlier master key, is rewritten under the
    /// primary one on open, its rows kept; a wrong key is refused with a clear error.
    #[test]
    fn the_catalog_is_encrypted_rekeyed_on_open_and_refused_under_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let plain = Connection::open(&path).unwrap();
        plain
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE legacy(email TEXT);
                 INSERT INTO legacy VALUES ('owner@plaintext-marker.example');",
            )
            .unwrap();
        drop(plain);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let first = CatalogKeys::from_keyring(&keyring(&[k1])).unwrap();
        let catalog = Catalog::open(&path, &first).unwrap();
        let email: String = catalog
            .lock()
            .query_row("SELECT email FROM legacy", [], |r| r.get(0))
            .unwrap();
        assert_eq!(email, "owner@plaintext-marker.example");
        drop(catalog);
        let readable_without_key = |p: &Path| try_key(&Connection::open(p).unwrap(), None).is_ok();
        assert!(!readable_without_key(&path));
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(14).any(|w| w == b"plaintext-mark"),
            "the email is on disk in clear"
        );
        // Rotated: k2 primary, k1 earlier. Then k2 alone opens it.
        let rotated = CatalogKeys::from_keyring(&keyring(&[k2, k1])).unwrap();
        drop(Catalog::open(&path, &rotated).unwrap());
        let only_new = CatalogKeys::from_keyring(&keyring(&[k2])).unwrap();
        let catalog = Catalog::open(&path, &only_new).unwrap();
        let n: i64 = catalog
            .lock()
            .query_row("SELECT count(*) FROM legacy", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(catalog);
        let Err(e) = Catalog::open(&path, &first) else {
            panic!("opened under a key it is not encrypted with");
        };
        assert!(e.to_string().contains("right key"), "{e}");
        assert!(!readable_without_key(&path));
    }

    #[test]
    fn a_stamp_goes_stale_with_every_write_that_may_touch_it_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db"), &test_keys()).unwrap();
        let (mine, other) = (TenantId::generate(), TenantId::generate());
        let stamp = || catalog.lock().stamp(mine);
        let s = stamp();
        catalog.ping().unwrap();
        catalog
            .lock()
            .execute_batch("CREATE TABLE scratch(a)")
            .unwrap();
        assert!(catalog.is_current(&s), "reads and DDL change no row");
        catalog
            .lock()
            .execute("INSERT INTO scratch VALUES (1)", [])
            .unwrap();
        assert!(
            !catalog.is_current(&s),
            "an unclassified write touches everything"
        );
        let s = stamp();
        catalog
            .lock()
            .execute("UPDATE scratch SET a = 2 WHERE a = 99", [])
            .unwrap();
        assert!(catalog.is_current(&s), "an update that matched nothing");
        {
            let mut conn = catalog.lock();
            let tx = conn.transaction().unwrap();
            tx.execute("DELETE FROM scratch", []).unwrap();
            tx.commit().unwrap();
        }
        assert!(!catalog.is_current(&s), "a transaction");
        let s = stamp();
        for (touches, stale) in [
            (Touches::Nothing, false),
            (Touches::Tenant(other), false),
            (Touches::Tenant(mine), true),
        ] {
            catalog
                .lock_touching(touches)
                .execute("INSERT INTO scratch VALUES (3)", [])
                .unwrap();
            assert_eq!(!catalog.is_current(&s), stale, "{touches:?}");
        }
    }

    /// The writes of a busy server that are not about credentials (the audit log, login
    /// failures, known networks) and those of another tenant leave a cached session current;
    /// a change to a user, or the session's own logout, does not.
    #[test]
    fn a_cached_session_stays_current_through_other_tenants_writes_and_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db"), &test_keys()).unwrap();
        let keyring = silo_crypto::Keyring::new(silo_crypto::MasterKey::generate(), vec![]);
        let mut refresh = 0u8;
        let mut signup = |org: &str| {
            let tenant = TenantId::generate();
            let user_id = hex::encode(silo_crypto::random_bytes::<16>());
            catalog
                .insert_signup(&NewSignup {
                    tenant,
                    tenant_name: org.to_owned(),
                    db_id: format!("db-{org}"),
                    sealed_db_token: vec![1],
                    user_id: user_id.clone(),
                    email: format!("o@{org}.example.com"),
                    password_hash: "x".to_owned(),
                })
                .unwrap();
            catalog.set_status(tenant, TenantStatus::Active).unwrap();
            let session = catalog
                .create_session(&user_id, tenant, &[refresh; 32], 3600, false)
                .unwrap();
            refresh += 1;
            (tenant, user_id, session.session_id)
        };
        let (a, a_user, a_session) = signup("a");
        let (b, b_user, b_session) = signup("b");
        let row = catalog.session(&a_session, &a_user, a).unwrap().unwrap();
        let audit = |tenant| {
            chain::AuditRecord::new(
                Some(tenant),
                "test",
                silo_types::AuditAction::SchemaChanged,
                &chain::RequestMeta::default(),
            )
        };
        catalog.append_audit(&keyring, &audit(a)).unwrap();
        catalog.append_audit(&keyring, &audit(b)).unwrap();
        catalog.clear_login_failures("o@a.example.com").unwrap();
        catalog.note_network(&a_user, "10.0.0.0/24").unwrap();
        catalog.revoke_session(&b_session, "logout").unwrap();
        catalog
            .create_session(&b_user, b, &[9; 32], 3600, false)
            .unwrap();
        assert!(
            catalog.is_current(&row.stamp),
            "other tenants' writes and the audit log"
        );
        // A user may be in any tenant: a change to one makes everything stale.
        catalog.bump_session_version(&b_user).unwrap();
        assert!(!catalog.is_current(&row.stamp));
        let row = catalog.session(&a_session, &a_user, a).unwrap().unwrap();
        catalog.set_status(b, TenantStatus::Suspended).unwrap();
        catalog.append_audit(&keyring, &audit(a)).unwrap();
        assert!(
            catalog.is_current(&row.stamp),
            "another tenant's suspension"
        );
        catalog.revoke_session(&a_session, "logout").unwrap();
        assert!(!catalog.is_current(&row.stamp), "its own logout");
        assert!(
            catalog
                .session(&a_session, &a_user, a)
                .unwrap()
                .unwrap()
                .revoked
        );
    }
}
