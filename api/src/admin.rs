//! The admin API's answers and requests (`/admin/v1/…`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use silo_types::TenantStatus;

/// A tenant as operators see it: `GET /admin/v1/tenants/{id}` and the answers of the
/// routes that change one.
#[derive(Clone, Serialize, Deserialize)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub plan: String,
    pub created_at: String,
    pub db: DbView,
    /// Members of the tenant.
    pub members: i64,
    /// The last sign-in or key use of anyone of the tenant (RFC 3339), if any.
    pub last_activity_at: Option<String>,
    /// The tenant's last failed migration, if its last migration failed.
    pub migration_failure: Option<MigrationFailure>,
    /// `POST /admin/v1/tenants` with an `owner_email`: the owner's invitation, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_invite_token: Option<String>,
    /// `DELETE /admin/v1/tenants/{id}`: when the destruction happens (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<i64>,
    /// `DELETE /admin/v1/tenants/{id}`: fetches the deletion certificate; shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_token: Option<String>,
}

/// Where a tenant's database is and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbView {
    pub placement: String,
    /// Bytes on disk (database and its WAL), when the placement can tell.
    pub size_bytes: Option<u64>,
    pub schema_version: i64,
}

/// A row of `GET /admin/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantListItem {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub plan: String,
    pub placement: String,
    pub schema_version: i64,
    pub created_at: String,
}

/// `GET /admin/v1/tenants`: a page, oldest id first; `next` is the cursor of the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantList {
    pub tenants: Vec<TenantListItem>,
    pub next: Option<String>,
}

/// A tenant whose last migration failed, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationFailure {
    pub tenant_id: String,
    pub version: i64,
    pub error: String,
    pub at: String,
}

/// `POST /admin/v1/admin-tokens`: the token, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminTokenCreated {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// A platform admin token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<i64>,
}

/// `GET /admin/v1/admin-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminTokenList {
    pub admin_tokens: Vec<AdminToken>,
}

/// A tenant migration known to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub checksum: String,
}

/// A migration some tenants have not had yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingMigration {
    pub version: u32,
    pub name: String,
    pub tenants: i64,
}

/// `GET /admin/v1/migrations/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationPlan {
    pub latest_version: u32,
    pub migrations: Vec<Migration>,
    /// Tenants per schema version (the version as text: a JSON object's keys).
    pub versions: BTreeMap<String, i64>,
    pub pending: Vec<PendingMigration>,
}

/// A fleet migration job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    /// `running`, `done` or `canary_failed`.
    pub state: String,
    pub target_version: u32,
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub remaining: usize,
    pub canary: usize,
    pub concurrency: usize,
}

/// `GET /admin/v1/migrations/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub latest_version: u32,
    pub versions: BTreeMap<String, i64>,
    pub job: Option<JobView>,
    pub failures: Vec<MigrationFailure>,
}

/// `POST /admin/v1/migrations/apply` (202): the job it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationStarted {
    pub job: JobView,
}

/// One chain's verification (a tenant's, or the platform's with `chain` empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainReport {
    pub chain: String,
    pub ok: bool,
    pub checked: usize,
    pub first_bad_id: Option<i64>,
    pub reason: Option<String>,
}

/// `GET /admin/v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerification {
    pub ok: bool,
    pub checked: usize,
    pub chains: Vec<ChainReport>,
}

/// `POST /admin/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// Sends the owner an invitation (its token is in the answer, once).
    pub owner_email: Option<String>,
    /// Default `free`.
    pub plan: Option<String>,
}

/// `POST /admin/v1/admin-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAdminToken {
    pub name: String,
}

/// `POST /admin/v1/migrations/apply`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyMigrations {
    /// Tenants migrated at once (1 to 64, default 8).
    pub concurrency: Option<usize>,
    /// Tenants migrated first; any failure among them stops the job.
    pub canary: Option<usize>,
}

/// `POST /admin/v1/tenants/{id}/rotate-db-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbTokenRotated {
    pub id: String,
    pub rotated: bool,
}

/// `POST /admin/v1/accounts/unlock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockAccount {
    pub email: String,
}

/// `POST /admin/v1/accounts/unlock`: the account's failed sign-ins are forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountUnlocked {
    pub email: String,
    /// Failed sign-ins forgotten (0: it was not locked).
    pub cleared: usize,
}

/// `POST /admin/v1/tenants/{id}/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    pub plan: String,
}

debug_hiding!(TenantView { id, name, status, plan, created_at, db, members, last_activity_at, migration_failure, delete_after } hiding { owner_invite_token, certificate_token });
debug_hiding!(AdminTokenCreated { id, name } hiding { token });
