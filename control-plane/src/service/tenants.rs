//! Operators' work on tenants (`/admin/v1/tenants…`): create, list, show, suspend, resume,
//! schedule deletion, restore, rotate the DB token. Every change is audited under the admin
//! token that made it. No function here reads a tenant's rows.

use secrecy::ExposeSecret;
use serde_json::json;
use silo_api as api;
use silo_provisioner::TenantStatus;
use silo_tenant_runtime::TenantId;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Admin, Role};
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::{normalize_email, validate_org};
use crate::service::members;
use crate::state::AppState;

/// A tenant id from a path: an id that cannot be one names no tenant (404, not 400).
pub(crate) fn parse_tenant(id: &str) -> ApiResult<TenantId> {
    id.parse()
        .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))
}

/// Records an admin action in the audit log (the tenant's chain, or the platform's) and in
/// the log.
async fn record(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: Option<TenantId>,
    action: AuditAction,
    target: String,
    change: impl FnOnce(AuditRecord) -> AuditRecord,
) -> ApiResult<()> {
    admin.log_action(action);
    let rec = AuditRecord::new(tenant, admin.actor(), action, meta).target(target);
    state.audit(change(rec)).await
}

/// A tenant as operators see it.
pub(crate) async fn view(state: &AppState, tenant: TenantId) -> ApiResult<api::TenantView> {
    let placement = state.provisioner.placement().clone();
    let (summary, (members, last_activity), failures, size) = state
        .catalog
        .blocking(move |c| {
            Ok((
                c.tenant_summary(tenant)?,
                c.tenant_activity(tenant)?,
                c.migration_failures()?,
                placement.size_bytes(tenant),
            ))
        })
        .await?;
    let summary = summary.ok_or_else(|| ApiError::NotFound("no such tenant".to_owned()))?;
    let failure = failures.into_iter().find(|f| f.tenant_id == summary.id);
    Ok(api::TenantView {
        id: summary.id,
        name: summary.name,
        status: summary.status,
        plan: summary.plan,
        created_at: summary.created_at,
        db: api::DbView {
            placement: summary.placement,
            size_bytes: Some(size),
            schema_version: summary.schema_version,
        },
        members,
        last_activity_at: last_activity,
        migration_failure: failure.map(|f| api::MigrationFailure {
            tenant_id: f.tenant_id,
            version: f.version,
            error: f.error,
            at: f.at,
        }),
        owner_invite_token: None,
        delete_after: None,
        certificate_token: None,
    })
}

/// A page of tenants ordered by id, optionally of one status; `next` is the cursor.
pub(crate) async fn list(
    state: &AppState,
    status: Option<&str>,
    limit: Option<i64>,
    after: Option<String>,
) -> ApiResult<api::TenantList> {
    let status = status
        .map(|s| {
            s.parse::<TenantStatus>().map_err(|_| {
                ApiError::InvalidInput(
                    "status is one of active, suspended, deleting, deleted".to_owned(),
                )
            })
        })
        .transpose()?;
    let limit = crate::service::tenant::page_limit(limit)?;
    let tenants = state
        .catalog
        .blocking(move |c| c.list_tenants(status, after.as_deref(), limit))
        .await?;
    let next = (tenants.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| tenants.last().map(|t| t.id.clone()))
        .flatten();
    Ok(api::TenantList {
        tenants: tenants
            .into_iter()
            .map(|t| api::TenantListItem {
                id: t.id,
                name: t.name,
                status: t.status,
                plan: t.plan,
                placement: t.placement,
                schema_version: t.schema_version,
                created_at: t.created_at,
            })
            .collect(),
        next,
    })
}

/// A tenant and its database; with `owner_email`, an owner invitation
/// (`owner_invite_token`, shown once) for that person.
pub(crate) async fn create(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    req: api::CreateTenant,
) -> ApiResult<api::TenantView> {
    let name = validate_org(&req.name)?;
    let plan = req
        .plan
        .unwrap_or_else(|| crate::plans::DEFAULT_PLAN.to_owned());
    known_plan(state, &plan)?;
    let owner = req
        .owner_email
        .as_deref()
        .map(normalize_email)
        .transpose()?;
    let (n, p) = (name.clone(), plan.clone());
    let tenant = state
        .provision_tenant(move |catalog, tenant, db_id, sealed| {
            catalog
                .insert_tenant_intent(tenant, &n, &p, db_id, sealed)
                .map_err(ApiError::from)
        })
        .await?;
    let mut body = view(state, tenant).await?;
    if let Some(email) = owner {
        let invite = members::invite(state, tenant, email, Role::Owner, None).await?;
        body.owner_invite_token = Some(invite.invite_token);
    }
    record(
        state,
        admin,
        meta,
        Some(tenant),
        AuditAction::AdminTenantCreated,
        format!("tenant:{tenant}"),
        |r| r.after(json!({ "name": name, "plan": plan })),
    )
    .await?;
    Ok(body)
}

/// A plan the server knows (`--plans`), or 400 naming them.
fn known_plan(state: &AppState, plan: &str) -> ApiResult<()> {
    if state.plans.contains(plan) {
        Ok(())
    } else {
        Err(ApiError::InvalidInput(format!(
            "plan {plan:?} is not one of this server's plans: {}",
            state.plans.names().join(", ")
        )))
    }
}

/// Puts a tenant on another plan. Its limits apply at once: its database is closed and
/// reopened under them by its next request.
pub(crate) async fn set_plan(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: TenantId,
    req: api::PlanChange,
) -> ApiResult<api::TenantView> {
    known_plan(state, &req.plan)?;
    let plan = req.plan.clone();
    let from = state
        .catalog
        .blocking(move |c| c.set_plan(tenant, &plan))
        .await?;
    state.close_tenant(tenant).await;
    state.tenant_rates.forget(tenant);
    record(
        state,
        admin,
        meta,
        Some(tenant),
        AuditAction::PlanChanged,
        format!("tenant:{tenant}"),
        |r| {
            r.before(json!({ "plan": from }))
                .after(json!({ "plan": req.plan }))
        },
    )
    .await?;
    view(state, tenant).await
}

/// Suspends (`to` = suspended) or resumes (`to` = active) a tenant. A suspension takes
/// effect at once: the next request reads the status, and the tenant's files are closed.
pub(crate) async fn set_status(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: TenantId,
    to: TenantStatus,
) -> ApiResult<api::TenantView> {
    let action = if to == TenantStatus::Active {
        AuditAction::TenantResumed
    } else {
        AuditAction::TenantSuspended
    };
    let from = state
        .catalog
        .blocking(move |c| c.set_status(tenant, to))
        .await?;
    if to != TenantStatus::Active {
        state.close_tenant(tenant).await;
    }
    record(
        state,
        admin,
        meta,
        Some(tenant),
        action,
        format!("tenant:{tenant}"),
        |r| {
            r.before(json!({ "status": from.as_str() }))
                .after(json!({ "status": to.as_str() }))
        },
    )
    .await?;
    view(state, tenant).await
}

/// Schedules a deletion: suspended at once, destroyed after the grace period;
/// `certificate_token` fetches the deletion certificate afterwards.
pub(crate) async fn schedule_deletion(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: TenantId,
) -> ApiResult<api::TenantView> {
    let (after, token) = crate::deletion::schedule(state, tenant).await?;
    record(
        state,
        admin,
        meta,
        Some(tenant),
        AuditAction::DeletionScheduled,
        format!("tenant:{tenant}"),
        |r| r.after(json!({ "delete_after": after })),
    )
    .await?;
    let mut body = view(state, tenant).await?;
    body.delete_after = Some(after);
    body.certificate_token = Some(token.expose_secret().to_owned());
    Ok(body)
}

/// Undoes a scheduled deletion within its grace period.
pub(crate) async fn restore(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: TenantId,
) -> ApiResult<api::TenantView> {
    state
        .catalog
        .blocking(move |c| c.restore_tenant(tenant))
        .await?;
    record(
        state,
        admin,
        meta,
        Some(tenant),
        AuditAction::TenantRestored,
        format!("tenant:{tenant}"),
        |r| r,
    )
    .await?;
    view(state, tenant).await
}

/// Re-keys the tenant's database: the old token no longer opens it.
pub(crate) async fn rotate_db_token(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    tenant: TenantId,
) -> ApiResult<api::DbTokenRotated> {
    let summary = state
        .catalog
        .blocking(move |c| c.tenant_summary(tenant))
        .await?;
    match summary.as_ref().map(|s| s.status) {
        None => return Err(ApiError::NotFound("no such tenant".to_owned())),
        Some(TenantStatus::Active | TenantStatus::Suspended) => {}
        Some(other) => {
            return Err(ApiError::Conflict(format!(
                "a {other} tenant's token cannot be rotated"
            )));
        }
    }
    state.rotate_db_token(tenant).await?;
    record(
        state,
        admin,
        meta,
        Some(tenant),
        AuditAction::DbTokenRotated,
        format!("tenant:{tenant}"),
        |r| r,
    )
    .await?;
    Ok(api::DbTokenRotated {
        id: tenant.to_string(),
        rotated: true,
    })
}
