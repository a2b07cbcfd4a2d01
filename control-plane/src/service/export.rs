//! Exports of a tenant's whole database: SQLite file, SQL dump, or a zip of CSV files.
//!
//! Every format is written on a blocking thread from one snapshot (writers keep writing)
//! while it is sent, in chunks down a bounded channel: memory stays bounded whatever the
//! size, and no plaintext copy is ever written to disk (the SQLite copy is made of the
//! pages SQLCipher decrypts as they are read). Files an older silo left in
//! `<data-dir>/exports/` are removed at start-up.

use silo_tenant_runtime::{RuntimeError, TenantId, export};
use silo_types::AuditAction;

use crate::audit::{AuditRecord, RequestMeta};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::exports::InFlight;
use crate::state::AppState;

/// An export, ready to send. `in_flight` must live as long as the sending: the tenant's
/// next export may start once it is dropped.
pub(crate) struct Export {
    pub(crate) payload: Payload,
    pub(crate) format: Format,
    pub(crate) tenant: TenantId,
    pub(crate) in_flight: InFlight,
}

/// What an export sends: chunks written while they are sent. A failure half-way ends the
/// stream with an error (the client sees a truncated transfer, never a silently short
/// export).
pub(crate) type Payload = tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>;

/// Chunks of a streamed export.
const CHUNK: usize = 64 * 1024;

/// An export holds a read snapshot (the tenant's WAL cannot be checkpointed past it), a
/// blocking thread and one of the tenant's request slots while it is sent: a client that
/// takes no chunk for this long is cut off...
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// ...and so is one that reads so slowly that the export takes longer than this.
const LONGEST_EXPORT: std::time::Duration = std::time::Duration::from_secs(3600);

type Chunks = tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>;

/// A writer that sends what it is given, in chunks, down a channel; blocking (it runs on
/// the export's blocking thread, and waits on the runtime for room in the channel).
struct ChannelWriter {
    tx: Chunks,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
    sent: usize,
    started: std::time::Instant,
}

impl ChannelWriter {
    fn new(tx: Chunks, runtime: tokio::runtime::Handle) -> Self {
        ChannelWriter {
            tx,
            runtime,
            buf: Vec::with_capacity(CHUNK),
            sent: 0,
            started: std::time::Instant::now(),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = chunk.len();
        let limit = STALLED_AFTER.min(LONGEST_EXPORT.saturating_sub(self.started.elapsed()));
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(limit, self.tx.send(Ok(chunk))));
        match sent {
            Ok(Ok(())) => {
                self.sent += len;
                Ok(())
            }
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client gone",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client reads the export too slowly",
            )),
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes the tenant's export in `format` down `tx`. Blocking. A wrong key (an interrupted
/// rotation) is retried with the next token while nothing has been sent.
fn stream(
    state: &AppState,
    tenant: TenantId,
    format: Format,
    tx: &Chunks,
    runtime: &tokio::runtime::Handle,
) {
    // A slot kept for the error, so that telling the client never waits on a client that
    // stopped reading (and the snapshot, thread and tenant slot are let go at once).
    let Ok(for_error) = tx.clone().try_reserve_owned() else {
        return;
    };
    let fail = |e: String| {
        tracing::error!(error = %e, format = format.name(), "streaming an export failed");
        for_error.send(Err(std::io::Error::other(e)));
    };
    let db = state.provisioner.placement().path(tenant);
    let tokens = match state.db_token_candidates(tenant) {
        Ok(tokens) => tokens,
        Err(e) => return fail(e.to_string()),
    };
    for token in tokens {
        let mut out = ChannelWriter::new(tx.clone(), runtime.clone());
        let written = match format {
            Format::Sqlite => export::export_sqlite(&db, &token, &mut out),
            Format::Sql => export::export_sql(&db, &token, &mut out),
            Format::Csv => export::export_csv_zip(&db, &token, &mut out),
        };
        let result = written.and_then(|()| {
            std::io::Write::flush(&mut out)
                .map_err(|e| RuntimeError::Internal(format!("send export: {e}")))
        });
        match result {
            Ok(()) => return,
            Err(RuntimeError::WrongKey) if out.sent == 0 => continue,
            Err(e) => return fail(e.to_string()),
        }
    }
    fail("no DB token opens the tenant's database".to_owned());
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
    // Recorded when it starts: its size is known only once it is sent.
    let mut after = serde_json::json!({ "format": format.name(), "streamed": true });
    if let (Some(a), Some(e)) = (after.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    state.audit(audit.after(after)).await?;
    // Eight chunks in flight, and a ninth slot kept for an error.
    let (tx, rx) = tokio::sync::mpsc::channel(9);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // The gate's permit is held while the export is written.
        let _permit = permit;
        span.in_scope(|| stream(&st, tenant, format, &tx, &runtime));
    });
    Ok(Export {
        payload: rx,
        format,
        tenant,
        in_flight,
    })
}
