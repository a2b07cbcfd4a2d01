//! `GET /v1/export?format=sqlite|sql|csv`: the tenant's whole database, streamed.
//!
//! The export is built on a blocking thread into `<data-dir>/exports/`, from one snapshot
//! (writers keep writing), then opened, unlinked at once, and streamed from the open file:
//! memory stays bounded whatever the size, and no plaintext copy keeps a name on disk once
//! streaming starts. Leftovers of a crash are removed at start-up.

use silo_types::AuditAction;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use silo_tenant_runtime::{RuntimeError, TenantId, export};

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::exports::InFlight;
use crate::http::extract::ApiQuery;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct ExportQuery {
    format: Option<String>,
}

#[derive(Clone, Copy)]
enum Format {
    Sqlite,
    Sql,
    Csv,
}

impl Format {
    fn parse(text: Option<&str>) -> ApiResult<Self> {
        match text.unwrap_or("sqlite") {
            "sqlite" => Ok(Format::Sqlite),
            "sql" => Ok(Format::Sql),
            "csv" => Ok(Format::Csv),
            other => Err(ApiError::InvalidInput(format!(
                "format {other:?} is not one of sqlite, sql, csv"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Sqlite => "sqlite",
            Format::Sql => "sql",
            Format::Csv => "csv",
        }
    }
}

pub(crate) async fn handle_export(
    State(state): State<AppState>,
    principal: Principal,
    meta: RequestMeta,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    principal.require_scope(Scope::Export)?;
    principal.require_step_up()?;
    let format = Format::parse(q.format.as_deref())?;
    let tenant = principal.tenant;
    let rec = AuditRecord::new(
        Some(tenant),
        principal.actor(),
        AuditAction::DataExport,
        &meta,
    )
    .target(format!("tenant:{tenant}"));
    export_response(&state, tenant, format, rec, serde_json::json!({})).await
}

/// Builds the export, records `audit` (its `after` gets the format and size, plus `extra`),
/// and streams the file.
async fn export_response(
    state: &AppState,
    tenant: TenantId,
    format: Format,
    audit: AuditRecord,
    extra: serde_json::Value,
) -> ApiResult<Response> {
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

    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    // The guard lives as long as the body: the next export may start once this one is sent.
    let body = Body::from_stream(futures_guard(stream, in_flight));
    let (content_type, ext) = match format {
        Format::Sqlite => ("application/vnd.sqlite3", "db"),
        Format::Sql => ("text/plain; charset=utf-8", "sql"),
        Format::Csv => ("application/zip", "zip"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{tenant}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// Keeps `guard` alive until the stream is dropped (sent or abandoned).
fn futures_guard<S>(stream: S, guard: InFlight) -> impl guarded::Stream<Item = S::Item>
where
    S: guarded::Stream + Unpin,
{
    guarded::Guarded {
        stream,
        _guard: guard,
    }
}

/// A stream that holds a value (a guard) for as long as it lives. Written here because it
/// is ten lines; no stream utility crate is otherwise needed.
mod guarded {
    pub(super) use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Guarded<S, G> {
        pub(super) stream: S,
        pub(super) _guard: G,
    }

    impl<S: Stream + Unpin, G: Unpin> Stream for Guarded<S, G> {
        type Item = S::Item;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.stream).poll_next(cx)
        }
    }
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

#[derive(Deserialize)]
pub(crate) struct AdminExportQuery {
    format: Option<String>,
    reason: Option<String>,
}

/// `GET /admin/v1/tenants/{id}/export?format=&reason=`: an operator's export of a tenant's
/// data, which needs a stated reason and is recorded in the tenant's audit log with it.
pub(crate) async fn handle_admin_export(
    State(state): State<AppState>,
    admin: crate::http::admin::Admin,
    meta: RequestMeta,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<AdminExportQuery>,
) -> ApiResult<Response> {
    let tenant: TenantId = id
        .parse()
        .map_err(|_| ApiError::NotFound("no such tenant".to_owned()))?;
    let format = Format::parse(q.format.as_deref())?;
    let reason = q
        .reason
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
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
    let rec = AuditRecord::new(
        Some(tenant),
        format!("admin:{}", admin.token_id),
        AuditAction::AdminTenantExported,
        &meta,
    )
    .target(format!("tenant:{tenant}"));
    export_response(
        &state,
        tenant,
        format,
        rec,
        serde_json::json!({ "reason": reason }),
    )
    .await
}
