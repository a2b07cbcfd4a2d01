//! Accounts and sessions: signup, sign-in (lockouts, the second factor, new networks),
//! refresh-token rotation, sign-out, password change.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use silo_api as api;
use silo_crypto::{hash_token, random_token};
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, Outcome, RequestMeta};
use crate::auth::{
    ACCESS_TOKEN_TTL_SECS, Principal, REFRESH_TOKEN_PREFIX, REFRESH_TOKEN_TTL_SECS, Role,
    hash_password, verify_password,
};
use crate::catalog::{CatalogError, NewSignup, RefreshOutcome};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, SignupMode};

const MIN_PASSWORD_CHARS: usize = 8;
/// Long passphrases are welcome; the cap only bounds the work of hashing one.
const MAX_PASSWORD_CHARS: usize = 1024;
const MAX_ORG_CHARS: usize = 100;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL_CHARS: usize = 254;

/// Failed logins tolerated per account and per client address within the window.
const LOCKOUT_MAX_FAILURES: i64 = 10;
const LOCKOUT_WINDOW_SECS: i64 = 15 * 60;

/// Trims and checks an organisation name (also the rule for other display names).
pub(crate) fn validate_org(org: &str) -> ApiResult<String> {
    let org = org.trim();
    if org.is_empty() {
        return Err(ApiError::InvalidInput("org must not be empty".to_owned()));
    }
    if org.chars().count() > MAX_ORG_CHARS {
        return Err(ApiError::InvalidInput(format!(
            "org is longer than {MAX_ORG_CHARS} characters"
        )));
    }
    if org.chars().any(char::is_control) {
        return Err(ApiError::InvalidInput(
            "org must not contain control characters".to_owned(),
        ));
    }
    Ok(org.to_owned())
}

/// Characters that show as nothing (zero-width spaces and joiners, direction marks, variation
/// selectors, tags, …): an address holding one looks like another and is refused.
fn invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Normalises (trim, Unicode NFC, lower case) and checks an email address: one `@`, a
/// non-empty local part, a dotted domain, no spaces, control or invisible characters. So
/// one address written with composed or decomposed accents is one account. Deliverability
/// is the mail system's business; this catches typos, garbage and look-alikes.
pub(crate) fn normalize_email(email: &str) -> ApiResult<String> {
    let nfc = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(email.trim());
    let email = nfc.to_lowercase();
    let bad = || {
        ApiError::InvalidInput(
            "email is not a valid address (expected something like name@example.com)".to_owned(),
        )
    };
    if email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains('@');
    if local.is_empty()
        || !domain_ok
        || email.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || invisible(c)
                || matches!(c, '<' | '>' | ',' | ';')
        })
    {
        return Err(bad());
    }
    Ok(email)
}

pub(crate) fn validate_password(password: &SecretString) -> ApiResult<()> {
    let n = password.expose_secret().chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(ApiError::InvalidInput(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(ApiError::InvalidInput(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// The network an address belongs to, for "new network" detection: /24 for IPv4, /64 for
/// IPv6.
pub(crate) fn network_of(ip: IpAddr) -> String {
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    ipnet::IpNet::new(ip, prefix)
        .map(|n| n.trunc().to_string())
        .unwrap_or_else(|_| ip.to_string())
}

pub(crate) async fn hash_on_blocking_thread(password: SecretString) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Checks a password against a stored hash (or a dummy one, for an unknown account: the
/// same argon2 work either way) on a blocking thread.
pub(crate) async fn password_matches(
    stored: Option<String>,
    password: SecretString,
) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || verify_password(stored.as_deref(), &password))
        .await
        .map_err(ApiError::internal)
}

/// Starts a session and returns its tokens. `second_factor` says whether the sign-in
/// proved the second factor (it opens the step-up window).
pub(crate) async fn start_session(
    state: &AppState,
    user_id: String,
    tenant: TenantId,
    second_factor: bool,
) -> ApiResult<api::Tokens> {
    let refresh = random_token(REFRESH_TOKEN_PREFIX);
    let refresh_hash = hash_token(refresh.expose_secret());
    let uid = user_id.clone();
    let start = state
        .catalog
        .blocking(move |c| {
            c.create_session(
                &uid,
                tenant,
                &refresh_hash,
                REFRESH_TOKEN_TTL_SECS,
                second_factor,
            )
        })
        .await
        .map_err(ApiError::internal)?;
    let access = state
        .tokens
        .issue(
            &user_id,
            tenant,
            &start.session_id,
            start.session_version,
            start.role,
        )
        .map_err(ApiError::internal)?;
    Ok(api::Tokens {
        access_token: access.expose_secret().to_owned(),
        refresh_token: refresh.expose_secret().to_owned(),
        expires_in: ACCESS_TOKEN_TTL_SECS,
    })
}

/// A new tenant, its owner, and its own database, ready on return.
pub(crate) async fn signup(
    state: &AppState,
    ip: Option<IpAddr>,
    meta: &RequestMeta,
    req: api::SignupRequest,
) -> ApiResult<api::SignupAnswer> {
    if state.signup.mode != SignupMode::Open {
        return Err(ApiError::Forbidden(
            "signups are closed on this server: join a tenant with an invitation",
        ));
    }
    let org = validate_org(&req.org)?;
    let email = normalize_email(&req.email)?;
    validate_password(&req.password)?;
    if !state.signup.allows(&email) {
        return Err(ApiError::InvalidInput(format!(
            "signups are limited to addresses at {}",
            state.signup.email_domains.join(", ")
        )));
    }
    // Counted only once the request is well-formed: a typo costs no budget.
    state
        .throttles
        .signup
        .check(ip)
        .map_err(ApiError::RateLimited)?;
    let password_hash = hash_on_blocking_thread(req.password).await?;

    let user_id = hex::encode(silo_crypto::random_bytes::<16>());
    let (uid, org_name, owner_email) = (user_id.clone(), org.clone(), email.clone());
    // The intent: tenant, owner account and membership in one catalog transaction.
    let tenant = state
        .provision_tenant(move |catalog, tenant, db_id, sealed| {
            let signup = NewSignup {
                tenant,
                tenant_name: org_name,
                sealed_db_token: sealed.to_vec(),
                db_id: db_id.to_owned(),
                user_id: uid,
                email: owner_email,
                password_hash,
            };
            catalog.insert_signup(&signup).map_err(|e| match e {
                CatalogError::EmailTaken => ApiError::Conflict(
                    "that email address already has an account; sign in instead".to_owned(),
                ),
                other => ApiError::internal(other),
            })
        })
        .await?;
    tracing::info!(tenant_id = %tenant, "tenant signed up and provisioned");
    let rec = AuditRecord::new(
        Some(tenant),
        format!("user:{user_id}"),
        AuditAction::Signup,
        meta,
    )
    .target(format!("tenant:{tenant}"))
    .after(serde_json::json!({ "name": org, "owner": user_id, "email": email }));
    state.audit(rec).await?;

    if let Some(ip) = ip {
        let (uid, net) = (user_id.clone(), network_of(ip));
        state
            .catalog
            .blocking(move |c| c.note_network(&uid, &net))
            .await?;
    }
    let tokens = start_session(state, user_id.clone(), tenant, false).await?;
    Ok(api::SignupAnswer {
        tenant: api::SignupTenant {
            id: tenant.to_string(),
            name: org,
            // provision() returned Ok only after marking the tenant active.
            status: TenantStatus::Active,
        },
        user: api::SignupUser {
            id: user_id,
            email,
            role: Role::Owner,
        },
        tokens,
    })
}

/// Signs in.
///
/// Order matters: the lockout is checked before the password (a locked account is no
/// password oracle), and an unknown email costs the same argon2 work as a known one.
pub(crate) async fn login(
    state: &AppState,
    ip: Option<IpAddr>,
    meta: &RequestMeta,
    req: api::LoginRequest,
) -> ApiResult<api::Tokens> {
    state
        .throttles
        .auth
        .check(ip)
        .map_err(ApiError::RateLimited)?;
    // A malformed email cannot have an account: same answer as a wrong password.
    let email = normalize_email(&req.email).unwrap_or_default();
    let tenant = req
        .tenant
        .as_deref()
        .map(|t| {
            t.parse::<TenantId>()
                .map_err(|_| ApiError::InvalidInput("tenant is not a tenant id".to_owned()))
        })
        .transpose()?;
    let ip_text = ip.map(|i| i.to_string());
    let net = ip.map(network_of);

    let (lookup_email, lookup_net) = (email.clone(), net.clone());
    let (row, attempt) = state
        .catalog
        .blocking(move |c| {
            let row = c.find_login(&lookup_email, tenant)?;
            let known = match (&row, &lookup_net) {
                (Some(r), Some(n)) => c.network_known(&r.user_id, n)?,
                _ => false,
            };
            let keys = lockout_keys(&lookup_email, ip_text.as_deref(), known);
            let attempt = c.begin_attempt(&keys, LOCKOUT_WINDOW_SECS)?;
            Ok((row, attempt))
        })
        .await?;
    let attempt_rows = match attempt {
        Ok(rows) => rows,
        Err(wait) => {
            // Audited in bounded form: one event per account per minute, with the count.
            if let Some(r) = &row
                && let Some(refused) = state.throttles.lockouts.refused(&r.user_id)
            {
                tracing::warn!(
                    refused,
                    "login refused: too many failures for this account or address"
                );
                let rec = AuditRecord::new(
                    None,
                    format!("user:{}", r.user_id),
                    AuditAction::Lockout,
                    meta,
                )
                .target(format!("user:{}", r.user_id))
                .outcome(Outcome::Denied)
                .after(serde_json::json!({ "refused": refused, "retry_after_secs": wait }));
                state.audit_for_user(&r.user_id, rec).await?;
            }
            return Err(ApiError::RateLimited(std::time::Duration::from_secs(
                u64::try_from(wait).unwrap_or(1),
            )));
        }
    };

    let stored = row.as_ref().map(|r| r.password_hash.clone());
    let ok = password_matches(stored, req.password).await?;
    let Some(row) = row.filter(|_| ok) else {
        login_failed(state, &email, None, meta).await?;
        return Err(ApiError::InvalidCredentials);
    };

    if row.totp_enabled {
        let Some(code) = req.totp else {
            // The password was right: asking for the code next is no failed login.
            let rows = attempt_rows.clone();
            state
                .catalog
                .blocking(move |c| c.forget_attempt(&rows))
                .await?;
            return Err(ApiError::TotpRequired(
                "two-factor authentication is on: send the current code from your authenticator app as totp (or a recovery code)",
            ));
        };
        if !second_factor_ok(state, &row.user_id, &email, code.expose_secret()).await? {
            login_failed(state, &email, Some(row.user_id.clone()), meta).await?;
            return Err(ApiError::TotpRequired(
                "that code is not valid (or was already used); send a current one",
            ));
        }
    }

    // Checked once the credentials are proven: a stranger learns nothing of the tenant.
    usable_tenant(row.tenant_status)?;
    tracing::Span::current().record("tenant_id", row.tenant.hex().as_str());
    let (uid, email_key, pair_key) = (
        row.user_id.clone(),
        format!("email:{email}"),
        ip.map(|i| format!("pair:{email}|{i}")),
    );
    let new_network = state
        .catalog
        .blocking(move |c| {
            c.forget_attempt(&attempt_rows)?;
            c.clear_login_failures(&email_key)?;
            if let Some(pair) = &pair_key {
                c.clear_login_failures(pair)?;
            }
            match &net {
                Some(net) if c.note_network(&uid, net)? => Ok(Some(net.clone())),
                _ => Ok(None),
            }
        })
        .await?;
    let actor = format!("user:{}", row.user_id);
    if let Some(net) = new_network {
        let rec = AuditRecord::new(
            Some(row.tenant),
            actor.clone(),
            AuditAction::NewNetwork,
            meta,
        )
        .target(actor.clone())
        .after(serde_json::json!({ "network": net }));
        state.audit(rec).await?;
    }
    state
        .audit(
            AuditRecord::new(Some(row.tenant), actor.clone(), AuditAction::Login, meta)
                .target(actor),
        )
        .await?;
    start_session(state, row.user_id, row.tenant, row.totp_enabled).await
}

/// Sessions are only for active tenants: a suspended or deletion-pending tenant's members
/// get no new tokens (the tenant's data routes refuse them anyway).
fn usable_tenant(status: TenantStatus) -> ApiResult<()> {
    match status {
        TenantStatus::Active => Ok(()),
        TenantStatus::Suspended => Err(ApiError::TenantSuspended),
        _ => Err(ApiError::Forbidden(
            "this tenant is scheduled for deletion: an operator can restore it within the grace period",
        )),
    }
}

/// What failed sign-ins are counted under, each with the failures that lock it for the
/// window: the account from this address, and the address. The account alone only from a
/// network it never signed in from: a stranger can lock an account out of strangers'
/// networks, never out of its owner's own.
fn lockout_keys(email: &str, ip: Option<&str>, known_network: bool) -> Vec<(String, i64)> {
    let mut keys = Vec::with_capacity(3);
    if let Some(ip) = ip {
        keys.push((format!("pair:{email}|{ip}"), LOCKOUT_MAX_FAILURES));
        keys.push((format!("ip:{ip}"), LOCKOUT_MAX_FAILURES));
    }
    if !known_network || ip.is_none() {
        keys.push((format!("email:{email}"), LOCKOUT_MAX_FAILURES));
    }
    keys
}

/// Records a failed login in the audit log of the account's tenants (if the account
/// exists). The attempt was already counted as a failure by `begin_attempt`.
async fn login_failed(
    state: &AppState,
    email: &str,
    user_id: Option<String>,
    meta: &RequestMeta,
) -> ApiResult<()> {
    tracing::info!("login failed");
    let email = email.to_owned();
    let uid = state
        .catalog
        .blocking(move |c| {
            Ok(match user_id {
                Some(u) => Some(u),
                None => c.user_by_email(&email)?.map(|(id, ..)| id),
            })
        })
        .await?;
    if let Some(uid) = uid {
        let rec = AuditRecord::new(None, "anonymous", AuditAction::LoginFailed, meta)
            .target(format!("user:{uid}"))
            .outcome(Outcome::Failure);
        state.audit_for_user(&uid, rec).await?;
    }
    Ok(())
}

/// Checks a TOTP code (once per time step) or spends a recovery code.
pub(crate) async fn second_factor_ok(
    state: &AppState,
    user_id: &str,
    account: &str,
    code: &str,
) -> ApiResult<bool> {
    let (uid, keyring, account, code) = (
        user_id.to_owned(),
        state.keyring.clone(),
        account.to_owned(),
        code.to_owned(),
    );
    let key = vec![(format!("totp:{uid}"), LOCKOUT_MAX_FAILURES)];
    // Codes are 6 digits: guesses are counted per user, and 10 wrong ones in 15 minutes
    // lock the second factor (429), whatever the route.
    let attempt = state
        .catalog
        .blocking({
            let key = key.clone();
            move |c| c.begin_attempt(&key, LOCKOUT_WINDOW_SECS)
        })
        .await?;
    let attempt_rows = match attempt {
        Ok(rows) => rows,
        Err(wait) => {
            tracing::warn!("second factor locked: too many wrong codes");
            return Err(ApiError::RateLimited(std::time::Duration::from_secs(
                u64::try_from(wait).unwrap_or(1),
            )));
        }
    };
    let ok = state
        .catalog
        .blocking(move |c| {
            if crate::two_factor::is_recovery_code(&code) {
                return c.use_recovery_code(&uid, &crate::two_factor::recovery_code_hash(&code));
            }
            let st = c.totp_state(&uid)?;
            let Some(sealed) = st.sealed_secret else {
                return Ok(false);
            };
            let step = crate::two_factor::open_secret(&keyring, &uid, &sealed)
                .and_then(|secret| crate::two_factor::totp(&secret, &account))
                .map(|totp| crate::two_factor::check_code(&totp, &code))
                .map_err(|e| CatalogError::Corrupt(format!("TOTP secret: {e}")))?;
            match step {
                Some(step) => c.accept_totp_step(&uid, step),
                None => Ok(false),
            }
        })
        .await
        .map_err(ApiError::from)?;
    if ok {
        state
            .catalog
            .blocking(move |c| c.forget_attempt(&attempt_rows))
            .await?;
    } else {
        tracing::warn!("wrong second-factor code");
    }
    Ok(ok)
}

/// Spends a refresh token and returns a new pair. A spent token presented again revokes the
/// whole session.
pub(crate) async fn refresh(
    state: &AppState,
    meta: &RequestMeta,
    req: api::RefreshRequest,
) -> ApiResult<api::Tokens> {
    let presented = hash_token(req.refresh_token.expose_secret());
    let next = random_token(REFRESH_TOKEN_PREFIX);
    let next_hash = hash_token(next.expose_secret());
    let outcome = state
        .catalog
        .blocking(move |c| c.rotate_refresh(&presented, &next_hash, REFRESH_TOKEN_TTL_SECS))
        .await
        .map_err(ApiError::internal)?;
    match outcome {
        RefreshOutcome::Rotated {
            session_id,
            user_id,
            tenant,
            role,
            session_version,
        } => {
            let status = state
                .catalog
                .blocking(move |c| Ok(c.tenant(tenant)?.map(|t| t.status)))
                .await?;
            usable_tenant(status.unwrap_or(TenantStatus::Deleted))?;
            let access = state
                .tokens
                .issue(&user_id, tenant, &session_id, session_version, role)
                .map_err(ApiError::internal)?;
            Ok(api::Tokens {
                access_token: access.expose_secret().to_owned(),
                refresh_token: next.expose_secret().to_owned(),
                expires_in: ACCESS_TOKEN_TTL_SECS,
            })
        }
        RefreshOutcome::Reused {
            session_id,
            user_id,
            tenant,
        } => {
            tracing::warn!("a spent refresh token was presented again; its session is revoked");
            let rec = AuditRecord::new(Some(tenant), "anonymous", AuditAction::RefreshReuse, meta)
                .target(format!("session:{session_id}"))
                .outcome(Outcome::Denied)
                .after(serde_json::json!({ "user": user_id, "session_revoked": true }));
            state.audit(rec).await?;
            Err(ApiError::Unauthenticated(
                "this refresh token was already used; the session has been ended, sign in again",
            ))
        }
        RefreshOutcome::Invalid => Err(ApiError::Unauthenticated(
            "the refresh token is not valid or has expired; sign in again",
        )),
    }
}

/// Ends the caller's session: its access and refresh tokens stop working at once.
pub(crate) async fn logout(
    state: &AppState,
    principal: &Principal,
    session: &str,
    meta: &RequestMeta,
) -> ApiResult<()> {
    let sid = session.to_owned();
    state
        .catalog
        .blocking(move |c| c.revoke_session(&sid, "logout"))
        .await?;
    state
        .close_streams_of_credential(principal.tenant, format!("session:{session}"))
        .await;
    let rec = AuditRecord::new(
        Some(principal.tenant),
        principal.actor(),
        AuditAction::Logout,
        meta,
    )
    .target(format!("session:{session}"));
    state.audit(rec).await
}

/// Changes the caller's password: every session of the user ends (session version bump);
/// the answer is a fresh session, so the caller stays signed in.
pub(crate) async fn change_password(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    req: api::PasswordChange,
) -> ApiResult<api::Tokens> {
    validate_password(&req.new_password)?;
    let uid = principal.user_id.clone();
    let stored = state
        .catalog
        .blocking(move |c| c.password_hash(&uid))
        .await?;
    if !password_matches(stored, req.current_password).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let new_hash = hash_on_blocking_thread(req.new_password).await?;
    let uid = principal.user_id.clone();
    state
        .catalog
        .blocking(move |c| c.set_password(&uid, &new_hash))
        .await?;
    state
        .close_streams_of_user(None, principal.user_id.clone(), true)
        .await;
    tracing::info!(user = %principal.user_id, "password changed; every session of the user ended");
    let rec = AuditRecord::new(None, principal.actor(), AuditAction::PasswordChanged, meta)
        .target(format!("user:{}", principal.user_id));
    state.audit_for_user(&principal.user_id, rec).await?;
    start_session(state, principal.user_id.clone(), principal.tenant, false).await
}

/// Ends every session of the caller, this one too.
pub(crate) async fn sign_out_everywhere(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
) -> ApiResult<()> {
    let uid = principal.user_id.clone();
    state
        .catalog
        .blocking(move |c| c.bump_session_version(&uid))
        .await?;
    state
        .close_streams_of_user(None, principal.user_id.clone(), true)
        .await;
    let rec = AuditRecord::new(
        None,
        principal.actor(),
        AuditAction::SignedOutEverywhere,
        meta,
    )
    .target(format!("user:{}", principal.user_id));
    state.audit_for_user(&principal.user_id, rec).await
}

/// An operator's unlock: forgets the account's counted failures (from every address), so
/// its owner can sign in at once. Audited in the account's tenants, or on the platform's
/// chain when no account has that email.
pub(crate) async fn unlock(
    state: &AppState,
    admin: &crate::auth::Admin,
    meta: &RequestMeta,
    req: api::UnlockAccount,
) -> ApiResult<api::AccountUnlocked> {
    let email = normalize_email(&req.email)?;
    let e = email.clone();
    let (cleared, user) = state
        .catalog
        .blocking(move |c| {
            Ok((
                c.unlock_account(&e)?,
                c.user_by_email(&e)?.map(|(id, ..)| id),
            ))
        })
        .await?;
    admin.log_action(AuditAction::Unlocked);
    let rec = AuditRecord::new(None, admin.actor(), AuditAction::Unlocked, meta)
        .target(format!("email:{email}"))
        .after(serde_json::json!({ "cleared": cleared }));
    match user {
        Some(uid) => state.audit_for_user(&uid, rec).await?,
        None => state.audit(rec).await?,
    }
    Ok(api::AccountUnlocked { email, cleared })
}

/// Who the caller is, in which tenant, with which role.
pub(crate) async fn me(state: &AppState, principal: &Principal) -> ApiResult<api::Me> {
    let tenant = principal.tenant;
    let row = state
        .catalog
        .blocking(move |c| c.tenant(tenant))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound("tenant not found".to_owned()))?;
    Ok(api::Me {
        user: api::MeUser {
            id: principal.user_id.clone(),
            email: principal.email.clone(),
        },
        tenant: api::MeTenant {
            id: row.id,
            name: row.name,
            status: row.status,
            plan: row.plan,
        },
        role: principal.role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@.com",
            "ada@example..com",
            "a\u{200B}da@example.com",
            "ada@exa\u{FEFF}mple.com",
            "ad\u{2060}a@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        // Composed and decomposed accents are one address.
        assert_eq!(
            normalize_email("Jos\u{0065}\u{0301}@example.com").ok(),
            normalize_email("jos\u{00E9}@example.com").ok()
        );
    }

    #[test]
    fn passwords_are_counted_in_characters() {
        assert!(validate_password(&SecretString::from("ééééééé".to_owned())).is_err());
        assert!(validate_password(&SecretString::from("éééééééé".to_owned())).is_ok());
        assert!(validate_password(&SecretString::from("x".repeat(1025))).is_err());
    }

    #[test]
    fn org_names_are_trimmed_and_bounded() {
        assert_eq!(validate_org("  Acme  ").ok().as_deref(), Some("Acme"));
        assert!(validate_org("   ").is_err());
        assert!(validate_org(&"a".repeat(101)).is_err());
        assert!(validate_org("a\u{0}b").is_err());
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(
            network_of("203.0.113.77".parse().expect("ip")),
            "203.0.113.0/24"
        );
        assert_eq!(
            network_of("2001:db8:1:2:3::4".parse().expect("ip")),
            "2001:db8:1:2::/64"
        );
    }
}
