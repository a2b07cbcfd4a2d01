//! Fleet migrations: bring every tenant database up to the latest tenant migration.
//!
//! One job at a time, in the background. Each tenant is migrated on its own connection
//! (beside the tenant's cached handle, which re-prepares its statements after the schema
//! change), each migration in its own transaction with its record, so a tenant is always
//! at a whole version. A failing tenant is recorded with its error and left at its previous
//! version; the others go on. Running the job again continues with whoever is behind.
//! With a canary, the first N tenants go first, one by one, and any failure stops the job.

use silo_types::AuditAction;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use rusqlite::OpenFlags;
use silo_provisioner::MigrationError;
use silo_tenant_runtime::TenantId;
use silo_tenant_runtime::handle::open_keyed;

use crate::audit::{AuditRecord, Outcome, RequestMeta};
use crate::error::ApiError;
use crate::state::AppState;

pub use crate::jobs::{Job, JobState, MigrationJobs};

/// Starts a job over every tenant behind the latest version. 409 while one runs.
pub async fn start(
    state: &AppState,
    concurrency: usize,
    canary: usize,
) -> Result<silo_api::JobView, ApiError> {
    let latest = state.provisioner.migrations().latest_version();
    let targets = state
        .catalog
        .blocking(move |c| c.tenants_to_migrate(latest))
        .await?;
    let job = Arc::new(Job {
        id: hex::encode(silo_crypto::random_bytes::<8>()),
        target_version: latest,
        total: targets.len(),
        canary: canary.min(targets.len()),
        concurrency,
        done: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        state: Mutex::new(JobState::Running),
    });
    {
        let mut current = state.jobs.current.lock();
        if current
            .as_ref()
            .is_some_and(|j| j.state() == JobState::Running)
        {
            return Err(ApiError::Conflict(
                "a migration job is already running; watch it with GET /admin/v1/migrations/status"
                    .to_owned(),
            ));
        }
        *current = Some(job.clone());
    }
    tracing::info!(job = %job.id, tenants = targets.len(), latest, concurrency, canary, "fleet migration started");
    let view = job.view();
    tokio::spawn(run(state.clone(), job, targets));
    Ok(view)
}

async fn run(state: AppState, job: Arc<Job>, targets: Vec<TenantId>) {
    let (canaries, rest) = targets.split_at(job.canary);
    for &tenant in canaries {
        if !migrate_counted(&state, &job, tenant).await {
            tracing::warn!(job = %job.id, tenant_id = %tenant, "canary tenant failed; stopping the migration");
            job.set_state(JobState::CanaryFailed);
            return;
        }
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(job.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for &tenant in rest {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (state, job) = (state.clone(), job.clone());
        tasks.spawn(async move {
            migrate_counted(&state, &job, tenant).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let v = job.view();
    tracing::info!(job = %job.id, done = v.done, failed = v.failed, "fleet migration finished");
    job.set_state(JobState::Done);
}

/// Migrates one tenant and counts the outcome. True on success.
async fn migrate_counted(state: &AppState, job: &Job, tenant: TenantId) -> bool {
    // Held while the tenant's file is migrated: a DB token rotation waits for it.
    let permit = state
        .gates
        .enter_for(tenant, std::time::Duration::from_secs(120))
        .await;
    let st = state.clone();
    let ok = match permit {
        Ok(permit) => tokio::task::spawn_blocking(move || {
            let _permit = permit;
            migrate_tenant(&st, tenant)
        })
        .await
        .unwrap_or(false),
        Err(_) => {
            let target = job.target_version;
            let _ = state
                .catalog
                .blocking(move |c| {
                    c.record_migration_result(
                        tenant,
                        None,
                        Some((target, "the tenant stayed busy; run the migration again")),
                    )
                })
                .await;
            false
        }
    };
    if ok {
        job.done.fetch_add(1, Ordering::Relaxed);
    } else {
        job.failed.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// Applies the pending migrations to one tenant and records the result. Blocking.
fn migrate_tenant(state: &AppState, tenant: TenantId) -> bool {
    let span = tracing::info_span!("migrate", tenant_id = %tenant);
    let _entered = span.enter();
    // Err((version the database is at, if known; version that failed; error))
    let outcome = (|| -> Result<u32, (Option<u32>, u32, String)> {
        let target = state.provisioner.migrations().latest_version();
        let cannot_open = |e: String| {
            (
                None,
                target,
                format!("cannot open the tenant database: {e}"),
            )
        };
        let path = state.provisioner.placement().path(tenant);
        // The recorded token, or the pending one if a rotation stopped half-way.
        let mut conn = None;
        for token in state
            .db_token_candidates(tenant)
            .map_err(|e| cannot_open(e.to_string()))?
        {
            if let Ok(c) = open_keyed(&path, &token, OpenFlags::SQLITE_OPEN_READ_WRITE) {
                conn = Some(c);
                break;
            }
        }
        let mut conn =
            conn.ok_or_else(|| cannot_open("no recorded DB token opens it".to_owned()))?;
        // Wait for the tenant's own writers rather than failing.
        let _ = conn.busy_timeout(std::time::Duration::from_secs(30));
        let migrations = state.provisioner.migrations();
        let known = state
            .catalog
            .tenant_migration_checksums()
            .map_err(|e| cannot_open(e.to_string()))?;
        migrations
            .apply_to_tenant(&mut conn, &known)
            .and_then(|migrated| {
                state
                    .catalog
                    .record_tenant_migrations(&migrated.to_record())
                    .map_err(|e| MigrationError::Io(std::io::Error::other(e.to_string())))?;
                Ok(migrated.version)
            })
            .map_err(|e| {
                let at = silo_tenant_runtime::bookkeeping::version(&conn)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let failed = match &e {
                    MigrationError::Failed { version, .. }
                    | MigrationError::Drift { version, .. } => *version,
                    _ => migrations
                        .iter()
                        .map(|m| m.version)
                        .find(|v| *v > at)
                        .unwrap_or(at),
                };
                (Some(at), failed, e.to_string())
            })
    })();
    let mut rec = AuditRecord::new(
        Some(tenant),
        "system",
        AuditAction::MigrationApplied,
        &RequestMeta::default(),
    )
    .target(format!("tenant:{tenant}"));
    match &outcome {
        Ok(v) => rec = rec.after(serde_json::json!({ "schema_version": v })),
        Err((at, failed, error)) => {
            rec = rec
                .outcome(Outcome::Failure)
                .before(serde_json::json!({ "schema_version": at }))
                .after(serde_json::json!({ "failed_version": failed, "error": error }));
        }
    }
    if let Err(e) = state.catalog.append_audit(&state.keyring, &rec) {
        tracing::error!(error = %e, "could not record the migration in the audit log");
    }
    let record = match &outcome {
        Ok(v) => state
            .catalog
            .record_migration_result(tenant, Some(*v), None),
        Err((at, failed, error)) => {
            tracing::warn!(error = %error, "tenant migration failed");
            state
                .catalog
                .record_migration_result(tenant, *at, Some((*failed, error)))
        }
    };
    if let Err(e) = record {
        tracing::error!(error = %e, "could not record the migration result");
        return false;
    }
    outcome.is_ok()
}
