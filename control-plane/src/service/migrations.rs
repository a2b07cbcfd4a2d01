//! Tenant schema migrations across the fleet: the plan, the background job, its status.

use serde_json::json;
use silo_api as api;
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Tenants per schema version, the version as text (a JSON object's keys).
fn versions_map(versions: &[(i64, i64)]) -> std::collections::BTreeMap<String, i64> {
    versions.iter().map(|(v, n)| (v.to_string(), *n)).collect()
}

/// What `apply` would run, and where.
pub(crate) async fn plan(state: &AppState) -> ApiResult<api::MigrationPlan> {
    let set = state.provisioner.migrations();
    let versions = state.catalog.blocking(|c| c.schema_versions()).await?;
    let pending = set
        .iter()
        .map(|m| api::PendingMigration {
            version: m.version,
            name: m.name.clone(),
            tenants: versions
                .iter()
                .filter(|(v, _)| *v < i64::from(m.version))
                .map(|(_, n)| n)
                .sum(),
        })
        .filter(|p| p.tenants > 0)
        .collect();
    Ok(api::MigrationPlan {
        latest_version: set.latest_version(),
        migrations: set
            .iter()
            .map(|m| api::Migration {
                version: m.version,
                name: m.name.clone(),
                checksum: m.checksum.clone(),
            })
            .collect(),
        versions: versions_map(&versions),
        pending,
    })
}

/// Starts the background job (409 while one runs), audited on the platform's chain.
pub(crate) async fn apply(
    state: &AppState,
    admin: &Admin,
    meta: &RequestMeta,
    req: api::ApplyMigrations,
) -> ApiResult<api::MigrationStarted> {
    let concurrency = req.concurrency.unwrap_or(8);
    if !(1..=64).contains(&concurrency) {
        return Err(ApiError::InvalidInput(
            "concurrency must be between 1 and 64".to_owned(),
        ));
    }
    let job = crate::fleet::start(state, concurrency, req.canary.unwrap_or(0)).await?;
    admin.log_action(AuditAction::AdminMigrationsStarted);
    let rec = AuditRecord::new(
        None,
        admin.actor(),
        AuditAction::AdminMigrationsStarted,
        meta,
    )
    .target(format!("job:{}", job.id))
    .after(json!({
        "target_version": job.target_version,
        "tenants": job.total,
        "concurrency": concurrency,
        "canary": job.canary,
    }));
    state.audit(rec).await?;
    Ok(api::MigrationStarted { job })
}

/// Tenants per schema version, the job, and the failures.
pub(crate) async fn status(state: &AppState) -> ApiResult<api::MigrationStatus> {
    let latest = state.provisioner.migrations().latest_version();
    let (versions, failures) = state
        .catalog
        .blocking(|c| Ok((c.schema_versions()?, c.migration_failures()?)))
        .await?;
    Ok(api::MigrationStatus {
        latest_version: latest,
        versions: versions_map(&versions),
        job: state.jobs.current(),
        failures: failures
            .into_iter()
            .map(|f| api::MigrationFailure {
                tenant_id: f.tenant_id,
                version: f.version,
                error: f.error,
                at: f.at,
            })
            .collect(),
    })
}
