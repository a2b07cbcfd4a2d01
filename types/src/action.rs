//! Every action the audit log records, by name.
//!
//! The names are the `action` column of the audit log, and part of the API: clients filter
//! on them (`GET /v1/audit?action=`). One enum, so a name is written once and a typo does not
//! compile.

use std::fmt;
use std::str::FromStr;

/// An audited action. `as_str` is the stored name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// `admin.migrations_started`: an operator started a fleet migration.
    AdminMigrationsStarted,
    /// `admin.tenant_created`: an operator created a tenant.
    AdminTenantCreated,
    /// `admin.tenant_exported`: an operator exported a tenant's database, with a reason.
    AdminTenantExported,
    /// `admin.token_created`: a platform admin token was made.
    AdminTokenCreated,
    /// `admin.token_revoked`: a platform admin token was revoked.
    AdminTokenRevoked,
    /// `api_key.created`: an API key was made.
    ApiKeyCreated,
    /// `api_key.revoked`: an API key was revoked.
    ApiKeyRevoked,
    /// `auth.2fa_disabled`: TOTP was turned off for an account.
    TwoFactorDisabled,
    /// `auth.2fa_enabled`: TOTP was confirmed and is required from now on.
    TwoFactorEnabled,
    /// `auth.2fa_enrolled`: a TOTP secret was issued, not yet confirmed.
    TwoFactorEnrolled,
    /// `auth.lockout`: sign-ins were refused because the account or address is locked out
    /// (at most one event a minute per account; `after.refused` counts them).
    Lockout,
    /// `auth.unlocked`: an operator cleared an account's failed sign-ins.
    Unlocked,
    /// `tenant.plan_changed`: an operator put a tenant on another plan.
    PlanChanged,
    /// `db.vacuumed`: the tenant's database was rebuilt without its free pages.
    Vacuumed,
    /// `auth.login`: a sign-in succeeded.
    Login,
    /// `auth.login_failed`: a sign-in failed.
    LoginFailed,
    /// `auth.logout`: a session was ended by its user.
    Logout,
    /// `auth.new_network`: a sign-in came from a network the account had not used.
    NewNetwork,
    /// `auth.password_changed`: a password was changed (every session ends).
    PasswordChanged,
    /// `auth.refresh_reuse`: a spent refresh token was presented again (the session ends).
    RefreshReuse,
    /// `auth.signed_out_everywhere`: every session of a user was ended.
    SignedOutEverywhere,
    /// `auth.step_up`: a TOTP code opened a step-up window.
    StepUp,
    /// `data.export`: a tenant's database was exported.
    DataExport,
    /// `db.schema_changed`: tenant SQL changed the schema.
    SchemaChanged,
    /// `member.invited`: an invitation was made.
    MemberInvited,
    /// `member.joined`: an invitation was accepted.
    MemberJoined,
    /// `member.removed`: a member was removed.
    MemberRemoved,
    /// `member.role_changed`: a member's role changed.
    MemberRoleChanged,
    /// `migration.applied`: a tenant migration was applied by a fleet job.
    MigrationApplied,
    /// `tenant.db_token_rotated`: the tenant's DB token was rotated (the database re-keyed).
    DbTokenRotated,
    /// `tenant.deleted`: the tenant was destroyed after its grace period.
    TenantDeleted,
    /// `tenant.deletion_scheduled`: the tenant's deletion was requested (grace period starts).
    DeletionScheduled,
    /// `tenant.restored`: a scheduled deletion was cancelled.
    TenantRestored,
    /// `tenant.resumed`: a suspended tenant was resumed.
    TenantResumed,
    /// `tenant.settings_changed`: the tenant's settings changed.
    SettingsChanged,
    /// `tenant.signup`: the tenant was created by a signup.
    Signup,
    /// `tenant.suspended`: the tenant was suspended.
    TenantSuspended,
}

impl AuditAction {
    pub const ALL: [AuditAction; 37] = [
        AuditAction::AdminMigrationsStarted,
        AuditAction::AdminTenantCreated,
        AuditAction::AdminTenantExported,
        AuditAction::AdminTokenCreated,
        AuditAction::AdminTokenRevoked,
        AuditAction::ApiKeyCreated,
        AuditAction::ApiKeyRevoked,
        AuditAction::TwoFactorDisabled,
        AuditAction::TwoFactorEnabled,
        AuditAction::TwoFactorEnrolled,
        AuditAction::Lockout,
        AuditAction::Unlocked,
        AuditAction::PlanChanged,
        AuditAction::Vacuumed,
        AuditAction::Login,
        AuditAction::LoginFailed,
        AuditAction::Logout,
        AuditAction::NewNetwork,
        AuditAction::PasswordChanged,
        AuditAction::RefreshReuse,
        AuditAction::SignedOutEverywhere,
        AuditAction::StepUp,
        AuditAction::DataExport,
        AuditAction::SchemaChanged,
        AuditAction::MemberInvited,
        AuditAction::MemberJoined,
        AuditAction::MemberRemoved,
        AuditAction::MemberRoleChanged,
        AuditAction::MigrationApplied,
        AuditAction::DbTokenRotated,
        AuditAction::TenantDeleted,
        AuditAction::DeletionScheduled,
        AuditAction::TenantRestored,
        AuditAction::TenantResumed,
        AuditAction::SettingsChanged,
        AuditAction::Signup,
        AuditAction::TenantSuspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::AdminMigrationsStarted => "admin.migrations_started",
            AuditAction::AdminTenantCreated => "admin.tenant_created",
            AuditAction::AdminTenantExported => "admin.tenant_exported",
            AuditAction::AdminTokenCreated => "admin.token_created",
            AuditAction::AdminTokenRevoked => "admin.token_revoked",
            AuditAction::ApiKeyCreated => "api_key.created",
            AuditAction::ApiKeyRevoked => "api_key.revoked",
            AuditAction::TwoFactorDisabled => "auth.2fa_disabled",
            AuditAction::TwoFactorEnabled => "auth.2fa_enabled",
            AuditAction::TwoFactorEnrolled => "auth.2fa_enrolled",
            AuditAction::Lockout => "auth.lockout",
            AuditAction::Unlocked => "auth.unlocked",
            AuditAction::PlanChanged => "tenant.plan_changed",
            AuditAction::Vacuumed => "db.vacuumed",
            AuditAction::Login => "auth.login",
            AuditAction::LoginFailed => "auth.login_failed",
            AuditAction::Logout => "auth.logout",
            AuditAction::NewNetwork => "auth.new_network",
            AuditAction::PasswordChanged => "auth.password_changed",
            AuditAction::RefreshReuse => "auth.refresh_reuse",
            AuditAction::SignedOutEverywhere => "auth.signed_out_everywhere",
            AuditAction::StepUp => "auth.step_up",
            AuditAction::DataExport => "data.export",
            AuditAction::SchemaChanged => "db.schema_changed",
            AuditAction::MemberInvited => "member.invited",
            AuditAction::MemberJoined => "member.joined",
            AuditAction::MemberRemoved => "member.removed",
            AuditAction::MemberRoleChanged => "member.role_changed",
            AuditAction::MigrationApplied => "migration.applied",
            AuditAction::DbTokenRotated => "tenant.db_token_rotated",
            AuditAction::TenantDeleted => "tenant.deleted",
            AuditAction::DeletionScheduled => "tenant.deletion_scheduled",
            AuditAction::TenantRestored => "tenant.restored",
            AuditAction::TenantResumed => "tenant.resumed",
            AuditAction::SettingsChanged => "tenant.settings_changed",
            AuditAction::Signup => "tenant.signup",
            AuditAction::TenantSuspended => "tenant.suspended",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not an action silo records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an audit action")]
pub struct UnknownAction;

impl FromStr for AuditAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        AuditAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownAction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        let mut names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        for a in AuditAction::ALL {
            assert_eq!(a.as_str().parse::<AuditAction>(), Ok(a));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len());
        assert!("db.schema_change".parse::<AuditAction>().is_err());
    }
}
