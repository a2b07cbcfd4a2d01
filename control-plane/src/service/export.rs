//! Exports of a tenant's whole database: SQLite file, SQL dump, or a zip of CSV files.
//!
//! The export is built on a blocking thread into `<data-dir>/exports/`, from one snapshot
//! (writers keep writing), then opened and unlinked at once: the caller streams it from the
//! open file, so memory stays bounded whatever the size, and no plaintext copy keeps a name
//! on disk once streaming starts. Leftovers of a crash are removed at start-up.

use std::path::PathBuf;

use silo_tenant_runtime::{RuntimeError, TenantId, export};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::exports::InFlight;
use crate::state::AppState;

/// A built export, ready to send. `in_flight` must live as long as the sending: the
/// tenant's next export may start once it is dropped.
pub(crate) struct Export {
    pub(crate) file: std::fs::File,
    pub(crate) size: u64,
    pub(crate) format: Format,
    pub(crate) tenant: TenantId,
    pub(crate) in_flight: InFlight,
}

impl Format {
    /// Content type and file name extension of the download.
    pub fn media(self) -> (&'static str, &'static str) {
        match self {
            Format::Sqlite => ("application/vnd.sqlite3", "db"),
            Format::Sql => ("text/plain; charset=utf-8", "sql"),
            Format::Csv => ("application/zip", "zip"),
        }
    }
}

#[derive(Clone, Copy)]
pub enum Format {
    Sqlite,
    Sql,
    Csv,
}

impl Format {
    pub fn parse(text: Option<&str>) -> ApiResult<Self> {
        match text.unwrap_or("sqlite") {
            "sqlite" => Ok(Format::Sqlite),
            "sql" => Ok(Format::Sql),
            "csv" => Ok(Format::Csv),
            other => Err(ApiError::InvalidInput(format!(
                "format {other:?} is not one of sqlite, sql, csv"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Sqlite => "sqlite",
            Format::Sql => "sql",
            Format::Csv => "csv",
        }
    }
}

/// The caller's own export (the handler has checked role, scope and step-up), audited.
pub(crate) async fn by_member(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    format: Format,
) -> ApiResult<Export> {
    let tenant = principal.tenant;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::DataExport,
        meta,
    )
    .target(format!("tenant:{tenant}"));
    prepare(state, tenant, format, rec, serde_json::json!({})).await
}

/// An operator's export of a tenant's data: it needs a stated reason, recorded in the
/// tenant's audit log with it.
pub(crate) async fn by_operator(
    state: &AppState,
    actor: String,
    meta: &RequestMeta,
    tenant: TenantId,
    format: Format,
    reason: Option<&str>,
) -> ApiResult<Export> {
    let reason = reason.map(str::trim).unwrap_or_default().to_owned();
    if reason.len() < 5 || reason.len() > 500 {
        return Err(ApiError::InvalidInput(
            "an operator export needs a reason (5 to 500 characters), e.g. a support ticket"
                .to_owned(),
        ));
    }
    let exists = state
        .catalog
        .blocking(move |c| c.tenant_exists(tenant))
        .await?;
    if !exists {
        return Err(ApiError::NotFound("no such tenant".to_owned()));
    }
    let rec = AuditRecord::new(Some(tenant), actor, AuditAction::AdminTenantExported, meta)
        .target(format!("tenant:{tenant}"));
    prepare(
        state,
        tenant,
        format,
        rec,
        serde_json::json!({ "reason": reason }),
    )
    .await
}

/// Builds the export and records `audit` (its `after` gets the format and size, plus
/// `extra`). One export per tenant at a time (429 otherwise).
async fn prepare(
    state: &AppState,
    tenant: TenantId,
    format: Format,
    audit: AuditRecord,
    extra: serde_json::Value,
) -> ApiResult<Export> {
    let in_flight = state
        .exports
        .begin(tenant)
        .ok_or(ApiError::RateLimited(std::time::Duration::from_secs(5)))?;

    let permit = state
        .gates
        .enter_for(tenant, std::time::Duration::from_secs(60))
        .await?;
    let st = state.clone();
    let span = tracing::Span::current();
    let file = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(|| build(&st, tenant, format))
    })
    .await
    .map_err(ApiError::internal)??;
    let size = file
        .metadata()
        .map(|m| m.len())
        .map_err(ApiError::internal)?;

    let mut after = serde_json::json!({ "format": format.name(), "bytes": size });
    if let (Some(a), Some(e)) = (after.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    state.audit(audit.after(after)).await?;
    Ok(Export {
        file,
        size,
        format,
        tenant,
        in_flight,
    })
}

/// Builds the export file and returns it opened and already unlinked. Blocking.
fn build(state: &AppState, tenant: TenantId, format: Format) -> ApiResult<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = state.exports_dir.clone();
    // Plaintext copies: only silo's own user may read them while they exist.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(ApiError::internal)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(ApiError::internal)?;
    let path: PathBuf = dir.join(format!(
        "{tenant}-{}.{}",
        hex::encode(silo_crypto::random_bytes::<6>()),
        format.name()
    ));
    let db = state.provisioner.placement().path(tenant);
    let private_file = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| RuntimeError::Internal(format!("create export file: {e}")))
    };
    let mut last = RuntimeError::Missing;
    for token in state.db_token_candidates(tenant)? {
        let result = match format {
            // Created empty with mode 0600 first; SQLite and the zip writer then fill it.
            Format::Sqlite => {
                private_file(&path).and_then(|_| export::export_sqlite(&db, &token, &path))
            }
            Format::Csv => {
                private_file(&path).and_then(|_| export::export_csv_zip(&db, &token, &path))
            }
            Format::Sql => private_file(&path).and_then(|f| {
                let mut w = std::io::BufWriter::new(f);
                export::export_sql(&db, &token, &mut w)
            }),
        };
        match result {
            Ok(()) => {
                let file = std::fs::File::open(&path).map_err(ApiError::internal)?;
                std::fs::remove_file(&path).map_err(ApiError::internal)?;
                return Ok(file);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                last = e;
                if !matches!(last, RuntimeError::WrongKey) {
                    break;
                }
            }
        }
    }
    Err(last.into())
}
