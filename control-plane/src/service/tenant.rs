//! The caller's own tenant: what it is, its settings, its security events, its deletion.

use serde_json::{Value, json};
use silo_api as api;
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Principal;
use crate::catalog::AuditFilter;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The tenant, its database and its settings.
pub(crate) async fn get(state: &AppState, tenant: TenantId) -> ApiResult<api::Tenant> {
    let placement = state.provisioner.placement().clone();
    let (row, size) = state
        .catalog
        .blocking(move |c| Ok((c.tenant(tenant)?, placement.size_bytes(tenant))))
        .await?;
    let row = row.ok_or_else(|| ApiError::NotFound("tenant not found".to_owned()))?;
    let limits = api::TenantLimits {
        storage_bytes: state.plans.limits(&row.plan).storage_bytes(),
    };
    Ok(api::Tenant {
        id: row.id,
        name: row.name,
        status: row.status,
        plan: row.plan,
        created_at: row.created_at,
        db: api::TenantDb {
            placement: row.placement,
            size_bytes: size,
            schema_version: row.schema_version,
        },
        settings: api::TenantSettings {
            require_2fa: row.require_2fa,
        },
        limits,
    })
}

/// How often a tenant may vacuum its own database: the server runs one at a time, so a
/// tenant vacuuming in a loop would keep every other tenant's waiting.
const VACUUM_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Who asked for a vacuum: the tenant's own, at most once per [`VACUUM_EVERY`], or an
/// operator making room on a full disk (never held back).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum VacuumBy {
    Tenant,
    Operator,
}

/// Rebuilds the tenant's database without its free pages, giving deleted data's space back
/// (and room under the quota). One at a time on the server: it needs memory about the
/// database's size. Audited.
pub(crate) async fn vacuum(
    state: &AppState,
    tenant: TenantId,
    actor: String,
    meta: &RequestMeta,
    by: VacuumBy,
) -> ApiResult<api::Vacuumed> {
    static RECENT: std::sync::OnceLock<moka::sync::Cache<TenantId, ()>> =
        std::sync::OnceLock::new();
    let recent = RECENT.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(VACUUM_EVERY)
            .build()
    });
    if by == VacuumBy::Tenant {
        if recent.contains_key(&tenant) {
            return Err(ApiError::RateLimited(VACUUM_EVERY));
        }
        recent.insert(tenant, ());
    }
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = tokio::time::timeout(std::time::Duration::from_secs(30), ONE_AT_A_TIME.acquire())
        .await
        .map_err(|_| ApiError::RateLimited(std::time::Duration::from_secs(30)))?
        .map_err(ApiError::internal)?;
    let (before, after) = state
        .with_tenant(tenant, |handle| {
            handle.vacuum(std::time::Duration::from_secs(300))
        })
        .await?;
    let rec = AuditRecord::new(Some(tenant), actor, AuditAction::Vacuumed, meta)
        .target(format!("tenant:{tenant}"))
        .after(json!({ "size_bytes_before": before, "size_bytes_after": after }));
    state.audit(rec).await?;
    Ok(api::Vacuumed {
        size_bytes_before: before,
        size_bytes_after: after,
    })
}

/// Changes the tenant's settings (e.g. require 2FA of every member), audited.
pub(crate) async fn set_settings(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    req: api::TenantSettings,
) -> ApiResult<api::TenantSettings> {
    let tenant = principal.tenant;
    let before = state
        .catalog
        .blocking(move |c| c.tenant(tenant))
        .await?
        .map(|t| t.require_2fa);
    state
        .catalog
        .blocking(move |c| c.set_require_2fa(tenant, req.require_2fa))
        .await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::SettingsChanged,
        meta,
    )
    .target(format!("tenant:{tenant}"))
    .before(json!({ "require_2fa": before }))
    .after(json!({ "require_2fa": req.require_2fa }));
    state.audit(rec).await?;
    Ok(req)
}

/// The audit actions that are security events.
const SECURITY_ACTIONS: &[AuditAction] = &[
    AuditAction::LoginFailed,
    AuditAction::Lockout,
    AuditAction::NewNetwork,
    AuditAction::RefreshReuse,
    AuditAction::TwoFactorEnabled,
    AuditAction::TwoFactorDisabled,
    AuditAction::StepUp,
    AuditAction::PasswordChanged,
    AuditAction::SignedOutEverywhere,
    AuditAction::SettingsChanged,
    AuditAction::TenantSuspended,
    AuditAction::TenantResumed,
    AuditAction::DeletionScheduled,
    AuditAction::DbTokenRotated,
];

/// Checks a page size: 1 to 1,000, default 100.
pub(crate) fn page_limit(limit: Option<i64>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::InvalidInput(
            "limit must be between 1 and 1000".to_owned(),
        ))
    }
}

/// The security-relevant part of the tenant's audit log, oldest first, after the event
/// `after`.
pub(crate) async fn security_events(
    state: &AppState,
    tenant: TenantId,
    limit: Option<i64>,
    after: Option<i64>,
) -> ApiResult<api::SecurityEvents> {
    let limit = page_limit(limit)?;
    let filter = AuditFilter {
        actions: SECURITY_ACTIONS
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        after_id: after,
        limit,
        ..AuditFilter::default()
    };
    let events = state
        .catalog
        .blocking(move |c| c.audit_events(tenant, &filter))
        .await?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(api::SecurityEvents {
        events: events
            .into_iter()
            .map(|e| api::SecurityEvent {
                id: e.id,
                kind: e.action,
                actor: e.actor,
                target: e.target,
                ip: e.ip,
                outcome: e.outcome,
                detail: e.after.and_then(|a| serde_json::from_str::<Value>(&a).ok()),
                at: e.at,
            })
            .collect(),
        next,
    })
}

/// Schedules the caller's tenant for deletion: suspended at once, destroyed after the grace
/// period. The answer carries the token that fetches the deletion certificate.
pub(crate) async fn schedule_deletion(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
) -> ApiResult<api::DeletionScheduled> {
    let tenant = principal.tenant;
    let (after, token) = crate::deletion::schedule(state, tenant).await?;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::DeletionScheduled,
        meta,
    )
    .target(format!("tenant:{tenant}"))
    .after(json!({ "delete_after": after }));
    state.audit(rec).await?;
    Ok(api::DeletionScheduled {
        status: TenantStatus::Deleting,
        delete_after: after,
        certificate_token: secrecy::ExposeSecret::expose_secret(&token).to_owned(),
    })
}

/// The signed certificate of a completed deletion, for the holder of the token given when
/// it was scheduled (the tenant's accounts are gone by then).
pub(crate) async fn deletion_certificate(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    req: api::CertificateRequest,
) -> ApiResult<Value> {
    state
        .throttles
        .auth
        .check(ip)
        .map_err(ApiError::RateLimited)?;
    let hash =
        silo_crypto::hash_token(secrecy::ExposeSecret::expose_secret(&req.certificate_token));
    let found = state
        .catalog
        .blocking(move |c| c.deletion_certificate(&hash))
        .await?;
    match found {
        None => Err(ApiError::NotFound(
            "no deletion matches this token".to_owned(),
        )),
        Some((_, None)) => Err(ApiError::Conflict(
            "the deletion is scheduled but not complete yet; ask again after the grace period"
                .to_owned(),
        )),
        Some((_, Some(doc))) => serde_json::from_str(&doc).map_err(ApiError::internal),
    }
}
