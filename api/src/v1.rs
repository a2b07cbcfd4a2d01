//! The tenant API (`/v1/…`): what signed-in users and API keys send and get back.
//!
//! Requests hold secrets as `SecretString` (never printed by `Debug`); answers that carry a
//! secret are the one response that creates it.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use silo_types::{Role, TenantStatus};

// ----- accounts and sessions -----

/// `POST /v1/signup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub org: String,
    pub email: String,
    pub password: SecretString,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: SecretString,
    /// A current TOTP code (or a recovery code), when the account has 2FA on.
    #[serde(default)]
    pub totp: Option<SecretString>,
    /// Which tenant to sign in to, for people who belong to several; default: the first
    /// they joined.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: SecretString,
}

/// `POST /v1/auth/password`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: SecretString,
    pub new_password: SecretString,
}

/// A token pair: the answer of sign-in, refresh, signup, invitation acceptance and password
/// change, and the only answers that carry these secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// `POST /v1/signup` (201).
#[derive(Clone, Serialize, Deserialize)]
pub struct SignupAnswer {
    pub tenant: SignupTenant,
    pub user: SignupUser,
    #[serde(flatten)]
    pub tokens: Tokens,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupTenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupUser {
    pub id: String,
    pub email: String,
    pub role: Role,
}

/// `GET /v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub user: MeUser,
    pub tenant: MeTenant,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeUser {
    pub id: String,
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeTenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub plan: String,
}

// ----- two-factor authentication -----

/// `POST /v1/auth/2fa/confirm`, `/verify`, `DELETE /v1/auth/2fa`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: SecretString,
}

/// `POST /v1/auth/2fa/enroll`: the new secret, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct TwoFactorEnrollment {
    /// Base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://` URI, for a QR code.
    pub otpauth_uri: String,
}

/// `POST /v1/auth/2fa/confirm`: ten single-use recovery codes, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// `POST /v1/auth/2fa/verify`: a fresh access token for the same session.
#[derive(Clone, Serialize, Deserialize)]
pub struct SteppedUp {
    pub access_token: String,
    pub expires_in: i64,
    /// Seconds during which sensitive routes accept this session.
    pub step_up_expires_in: i64,
}

// ----- members and invitations -----

/// A member of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub role: Role,
}

/// `GET /v1/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// `POST /v1/invites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    pub role: Role,
}

/// `POST /v1/invites` (201): the invitation token, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct InviteCreated {
    pub invite_token: String,
    /// Seconds until the invitation lapses.
    pub expires_in: i64,
}

/// `POST /v1/invites/accept`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvite {
    pub invite_token: SecretString,
    /// The new account's password, or the existing account's when the email has one.
    pub password: SecretString,
    /// A current code, when the existing account has 2FA on.
    #[serde(default)]
    pub totp: Option<SecretString>,
}

/// `PATCH /v1/members/{user_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

/// `PATCH /v1/members/{user_id}`: the member's new role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRole {
    pub user_id: String,
    pub role: Role,
}

// ----- API keys -----

/// `POST /v1/api-keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in_days: Option<i64>,
    /// CIDRs (or bare addresses) the key may be used from; absent: anywhere.
    pub allowed_ips: Option<Vec<String>>,
}

/// `POST /v1/api-keys` (201): the key, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub id: String,
    pub key: String,
    pub prefix: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

/// An API key, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    pub allowed_ips: Option<Vec<String>>,
    /// Who made it.
    pub user_id: String,
    pub created_at: String,
}

/// `GET /v1/api-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

// ----- the tenant -----

/// `GET /v1/tenant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub plan: String,
    pub created_at: String,
    /// Usage is in `db` (`size_bytes`).
    pub db: TenantDb,
    pub settings: TenantSettings,
    /// What the plan allows.
    pub limits: TenantLimits,
}

/// A tenant's plan limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantLimits {
    /// The database's storage quota; `null`: none.
    pub storage_bytes: Option<u64>,
}

/// `POST /v1/db/vacuum`: the database file's size before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vacuumed {
    pub size_bytes_before: u64,
    pub size_bytes_after: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantDb {
    pub placement: String,
    pub size_bytes: u64,
    pub schema_version: i64,
}

/// `PATCH /v1/tenant/settings` (request and answer), and part of `GET /v1/tenant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub require_2fa: bool,
}

/// A security event: `GET /v1/security-events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityEvent {
    pub id: i64,
    /// The audit action, e.g. `auth.lockout`.
    pub kind: String,
    pub actor: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub outcome: String,
    pub detail: Option<Value>,
    pub at: String,
}

/// `GET /v1/security-events`: a page; `next` is the cursor for `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityEvents {
    pub events: Vec<SecurityEvent>,
    pub next: Option<i64>,
}

/// `DELETE /v1/tenant` (202).
#[derive(Clone, Serialize, Deserialize)]
pub struct DeletionScheduled {
    /// Always `deleting`.
    pub status: TenantStatus,
    /// Unix seconds.
    pub delete_after: i64,
    /// Fetches the deletion certificate once it is done; shown once.
    pub certificate_token: String,
}

/// `POST /v1/deletion-certificate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    pub certificate_token: SecretString,
}

// ----- the audit log -----

/// An audit event as `GET /v1/audit` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Hex.
    pub hash: String,
    /// Hex.
    pub prev_hash: String,
}

/// `GET /v1/audit`: a page; `next` (the last id, as text) is the cursor for `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvents {
    pub events: Vec<AuditEvent>,
    pub next: Option<String>,
}

/// `GET /v1/audit/verify`: one chain's verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainCheck {
    pub ok: bool,
    pub checked: usize,
    pub first_bad_id: Option<i64>,
    /// Why verification failed, for people.
    pub reason: Option<String>,
}

debug_hiding!(Tokens { expires_in } hiding { access_token, refresh_token });
debug_hiding!(SignupAnswer { tenant, user } hiding { tokens });
debug_hiding!(TwoFactorEnrollment {} hiding { secret, otpauth_uri });
debug_hiding!(RecoveryCodes {} hiding { recovery_codes });
debug_hiding!(SteppedUp { expires_in, step_up_expires_in } hiding { access_token });
debug_hiding!(InviteCreated { expires_in } hiding { invite_token });
debug_hiding!(ApiKeyCreated { id, prefix, name, scopes, expires_at } hiding { key });
debug_hiding!(DeletionScheduled { status, delete_after } hiding { certificate_token });
