//! libSQL's Hrana protocol (versions 2 and 3, JSON encoding) run against one tenant's own
//! connection. This module is the protocol's data model and its execution; the HTTP side
//! (routes, batons, stream lifetimes, authentication) lives in the control plane.
//!
//! Written here rather than taken from a crate: the `libsql` crates implement the server
//! side only inside sqld (`libsql-server`, not a library) and the client side over their own
//! SQLite build, which cannot link beside SQLCipher. The wire format follows
//! `docs/HRANA_3_SPEC.md` of tursodatabase/libsql, including sqld's reading of batch
//! conditions (a skipped step counts as failed for `error`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rusqlite::Connection;
use serde::Deserialize;

use crate::error::{Result, RuntimeError};
use crate::handle::{
    ExecLimits, Lease, QueryResult, ResultBudget, TenantHandle, map_error, run_with,
};
use crate::sandbox::{AccessLevel, SandboxState};
use crate::value::Value;

mod json;
mod read;
pub use json::{WriteJson, write_opt_str};

/// Most SQL texts one stream may store with `store_sql`, and their total size.
pub const MAX_STORED_SQL: usize = 1_000;
pub const MAX_STORED_SQL_BYTES: usize = 1024 * 1024;
/// Stored SQL text of all of one tenant's streams together, and of the whole server: a
/// tenant that opens many streams fills its own share, never the server's memory.
pub const MAX_STORED_SQL_BYTES_PER_TENANT: usize = 8 * 1024 * 1024;
pub const MAX_STORED_SQL_BYTES_TOTAL: usize = 256 * 1024 * 1024;

/// Bytes of stored SQL text held by every stream of the server.
static STORED_SQL_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The stored-SQL account a session draws from: its tenant's (shared by the tenant's
/// streams) and the server's.
#[derive(Debug, Clone, Default)]
pub struct SqlBudget {
    tenant: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SqlBudget {
    /// A tenant's account; give every stream of the tenant a clone of the same one.
    pub fn new() -> Self {
        SqlBudget::default()
    }

    /// Bytes the tenant's streams hold now.
    pub fn used(&self) -> usize {
        self.tenant.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.tenant.fetch_add(n, Relaxed) + n > MAX_STORED_SQL_BYTES_PER_TENANT {
            self.tenant.fetch_sub(n, Relaxed);
            return Err(RuntimeError::InvalidInput(format!(
                "this tenant's streams store at most {MAX_STORED_SQL_BYTES_PER_TENANT} bytes of \
                 SQL text together; close some stored SQL or streams first"
            )));
        }
        if STORED_SQL_BYTES.fetch_add(n, Relaxed) + n > MAX_STORED_SQL_BYTES_TOTAL {
            STORED_SQL_BYTES.fetch_sub(n, Relaxed);
            self.tenant.fetch_sub(n, Relaxed);
            return Err(RuntimeError::Exhausted);
        }
        Ok(())
    }

    fn give_back(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.tenant.fetch_sub(n, Relaxed);
        STORED_SQL_BYTES.fetch_sub(n, Relaxed);
    }
}

/// Streams holding a tenant database across calls (inside a transaction), and how many may.
/// Each such stream keeps its tenant's handle alive; past the limit, new ones are refused so
/// that handles stay for tenants that just want to run a statement. A tenant pins at most
/// one handle (its own), so the limit is shared by at least that many tenants.
static PINNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MAX_PINNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Sets how many streams may hold a tenant database inside a transaction at once (the
/// server sets half the databases that may be open).
pub fn set_max_pinned(n: usize) {
    MAX_PINNED.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// One stream's hold on its tenant's database across calls.
#[derive(Debug)]
struct Pin;

impl Pin {
    fn take() -> Option<Pin> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = MAX_PINNED.load(Relaxed);
        PINNED
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Pin)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        PINNED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Streams holding a tenant database inside a transaction now.
pub fn pinned_streams() -> usize {
    PINNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes of stored SQL text every stream of the server holds now (for metrics and tests).
pub fn stored_sql_bytes() -> usize {
    STORED_SQL_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}
/// Most steps in one batch. sqld has no such cap; the request body limit is the real bound
/// (a 1 MiB body holds some 40,000 of the smallest steps), and the time and result
/// budgets bound the work. This only keeps a raised body limit from meaning millions.
pub const MAX_BATCH_STEPS: usize = 100_000;

// --- the wire format ---

/// A value as Hrana tags it: integers as decimal strings (JSON numbers lose precision past
/// 2^53), blobs as base64.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "lowercase")]
pub enum HValue {
    Null,
    Integer {
        #[serde(deserialize_with = "int_as_string::deserialize")]
        value: i64,
    },
    Float {
        value: f64,
    },
    Text {
        value: String,
    },
    Blob {
        #[serde(deserialize_with = "blob_base64::deserialize")]
        base64: Vec<u8>,
    },
}

crate::tagged::deserialize_tagged!(HValue, "a Hrana value");

mod int_as_string {
    use std::fmt;

    use serde::{Deserializer, de};

    /// The spec says a string; a JSON integer is accepted too.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer as a string of digits")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<i64, E> {
                s.parse()
                    .map_err(|_| E::custom(format!("{s:?} is not a 64-bit integer")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<i64, E> {
                Ok(n)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<i64, E> {
                i64::try_from(n).map_err(|_| E::custom(format!("{n} is not a 64-bit integer")))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<i64, E> {
                Err(E::custom(format!("{n} is not a 64-bit integer")))
            }
        }
        d.deserialize_any(V)
    }
}

mod blob_base64 {
    use super::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, de};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| de::Error::custom("blob value is not valid base64"))
    }

    /// Padded or not, as clients differ.
    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        STANDARD
            .decode(text.as_bytes())
            .or_else(|_| STANDARD_NO_PAD.decode(text.as_bytes()))
            .ok()
    }
}
use blob_base64::decode as decode_blob;

impl From<Value> for HValue {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => HValue::Null,
            Value::Integer(value) => HValue::Integer { value },
            // JSON has no NaN or infinity (SQLite never stores NaN; ±inf go out as null).
            Value::Real(value) if value.is_finite() => HValue::Float { value },
            Value::Real(_) => HValue::Null,
            Value::Text(value) => HValue::Text { value },
            Value::Blob(base64) => HValue::Blob { base64 },
        }
    }
}

impl rusqlite::ToSql for HValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V, ValueRef};
        Ok(match self {
            HValue::Null => ToSqlOutput::Owned(V::Null),
            HValue::Integer { value } => ToSqlOutput::Owned(V::Integer(*value)),
            HValue::Float { value } => ToSqlOutput::Owned(V::Real(*value)),
            HValue::Text { value } => ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes())),
            HValue::Blob { base64 } => ToSqlOutput::Borrowed(ValueRef::Blob(base64)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NamedArg {
    pub name: String,
    pub value: HValue,
}

/// A statement: its text (or a stored text's id) and its arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Stmt {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub sql_id: Option<i32>,
    #[serde(default)]
    pub args: Vec<HValue>,
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    /// Absent or `null` means yes.
    #[serde(default)]
    pub want_rows: Option<bool>,
}

// The answers below are written as JSON by `json::WriteJson`, field for field in the order
// they are declared (the spec's names and order).

#[derive(Debug, Clone)]
pub struct Col {
    pub name: Option<String>,
    pub decltype: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StmtResult {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<HValue>>,
    pub affected_row_count: u64,
    pub last_insert_rowid: Option<i64>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub query_duration_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchStep {
    #[serde(default)]
    pub condition: Option<BatchCond>,
    pub stmt: Stmt,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: u32 },
    Error { step: u32 },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
    Or { conds: Vec<BatchCond> },
    IsAutocommit,
}

crate::tagged::deserialize_tagged!(BatchCond, "a batch condition");

#[derive(Debug, Clone)]
pub struct BatchResult {
    pub step_results: Vec<Option<StmtResult>>,
    pub step_errors: Vec<Option<HError>>,
}

#[derive(Debug, Clone)]
pub struct DescribeResult {
    pub params: Vec<DescribeParam>,
    pub cols: Vec<Col>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

#[derive(Debug, Clone)]
pub struct DescribeParam {
    pub name: Option<String>,
}

/// An error as Hrana reports it: a message for people and a code for programs.
#[derive(Debug, Clone, PartialEq)]
pub struct HError {
    pub message: String,
    pub code: String,
}

impl From<&RuntimeError> for HError {
    fn from(e: &RuntimeError) -> Self {
        let code = match e.root() {
            RuntimeError::Sql { code, .. } => code,
            RuntimeError::InvalidInput(_) => "SQL_INPUT_ERROR",
            RuntimeError::Forbidden(_) => {
                metrics::counter!("silo_sandbox_refusals_total").increment(1);
                "SQLITE_AUTH"
            }
            RuntimeError::Timeout => "SQLITE_INTERRUPT",
            RuntimeError::ResultTooLarge => "RESPONSE_TOO_LARGE",
            RuntimeError::Busy | RuntimeError::ReadersBusy => "SQLITE_BUSY",
            RuntimeError::TooManyOpen => "SERVER_BUSY",
            RuntimeError::Exhausted
            | RuntimeError::QuotaExceeded
            | RuntimeError::Full
            | RuntimeError::WritesPaused => "SQLITE_FULL",
            RuntimeError::WrongKey | RuntimeError::Missing => "TENANT_UNAVAILABLE",
            RuntimeError::Internal(_)
            | RuntimeError::InStatement { .. }
            | RuntimeError::WritesNotInline => "INTERNAL",
        };
        if let RuntimeError::Internal(_)
        | RuntimeError::WrongKey
        | RuntimeError::Missing
        | RuntimeError::WritesNotInline = e.root()
        {
            tracing::error!(error = %e, "libSQL request failed on silo's side");
        }
        let message = match e.root() {
            // The details of silo's own faults are for its log, not for the client.
            RuntimeError::Internal(_) | RuntimeError::WritesNotInline => {
                "internal error; the operator can find it in the log"
            }
            RuntimeError::WrongKey | RuntimeError::Missing => {
                "the tenant database is unavailable; the operator has been told"
            }
            _ => "",
        };
        HError {
            message: if message.is_empty() {
                e.root().to_string()
            } else {
                message.to_owned()
            },
            code: code.to_owned(),
        }
    }
}

/// One request of a pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case")]
pub enum StreamRequest {
    Close,
    Execute {
        stmt: Stmt,
    },
    Batch {
        batch: Batch,
    },
    Sequence {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit,
}

crate::tagged::deserialize_tagged!(StreamRequest, "a stream request");

/// The body of `POST /v2/pipeline` and `/v3/pipeline`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PipelineRequest {
    /// The stream to continue; none opens a new one.
    #[serde(default)]
    pub baton: Option<String>,
    pub requests: Vec<StreamRequest>,
}

impl PipelineRequest {
    /// Reads a body of the shape libSQL clients send (`execute`, `close`, `get_autocommit`
    /// with plain arguments) without serde, for speed (see `read.rs`); `None` for any other,
    /// which the caller reads with serde, getting the same value or serde's error.
    pub fn read_common(body: &[u8]) -> Option<PipelineRequest> {
        read::pipeline(body)
    }
}

#[derive(Debug, Clone)]
pub enum StreamResponse {
    Close,
    Execute { result: StmtResult },
    Batch { result: BatchResult },
    Sequence,
    Describe { result: DescribeResult },
    StoreSql,
    CloseSql,
    GetAutocommit { is_autocommit: bool },
}

#[derive(Debug, Clone)]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: HError },
}

/// One line of a `/v3/cursor` answer after the first.
#[derive(Debug, Clone)]
pub enum CursorEntry {
    StepBegin {
        step: u32,
        cols: Vec<Col>,
    },
    StepEnd {
        affected_row_count: u64,
        last_insert_rowid: Option<i64>,
    },
    StepError {
        step: u32,
        error: HError,
    },
    Row {
        row: Vec<HValue>,
    },
    Error {
        error: HError,
    },
}

// --- execution ---

/// The server side of one stream: the SQL texts it stored, and, while it is inside a
/// transaction, the tenant connection it holds. Not shared: the control plane keeps each
/// session behind its own lock and runs it on a blocking thread.
#[derive(Debug, Default)]
pub struct Session {
    lease: Option<Lease>,
    /// When the running call must be done (one time budget per pipeline or cursor call).
    deadline: Option<Instant>,
    sqls: HashMap<i32, String>,
    /// Where the bytes of `sqls` are accounted.
    budget: SqlBudget,
    /// Held while `lease` is kept across calls (a transaction is open).
    pin: Option<Pin>,
    closed: bool,
    transaction_started: Option<Instant>,
    /// Session PRAGMAs the stream set (`PRAGMA foreign_keys = OFF`, …), as statements that
    /// set them again: they hold for the stream, like on a connection of its own, though
    /// the connection goes back to the handle (and is reset) between calls.
    session_pragmas: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forget_sqls();
    }
}

/// What a pipeline or cursor call did, beyond its answers.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Texts of the statements that changed the schema, for the audit log.
    pub schema_changes: Vec<String>,
}

impl Session {
    /// A session drawing stored SQL from `budget` (its tenant's account).
    pub fn new(budget: SqlBudget) -> Self {
        let mut session = Session::default();
        session.budget = budget;
        session
    }

    fn forget_sqls(&mut self) {
        let held: usize = self.sqls.values().map(String::len).sum();
        self.sqls.clear();
        self.budget.give_back(held);
    }

    /// The client closed the stream.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Since when the stream has held a transaction open, if it does.
    pub fn transaction_started(&self) -> Option<Instant> {
        self.transaction_started
    }

    /// The tenant this session holds a connection of, if it holds one.
    pub fn holds_tenant(&self) -> Option<crate::TenantId> {
        self.lease.as_ref().map(Lease::tenant)
    }

    /// Ends the stream: an open transaction is rolled back and the connection goes back to
    /// its handle.
    pub fn close(&mut self) {
        self.lease = None;
        self.pin = None;
        self.transaction_started = None;
        self.forget_sqls();
        self.closed = true;
    }

    /// Runs a pipeline's requests in order; each gets its own result. Blocking.
    pub fn pipeline(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        requests: Vec<StreamRequest>,
    ) -> (Vec<StreamResult>, Outcome) {
        let mut outcome = Outcome::default();
        let mut budget = ResultBudget::new(handle.limits().max_result_bytes);
        let mut results = Vec::with_capacity(requests.len());
        self.deadline = Some(Instant::now() + handle.limits().time_budget);
        for request in requests {
            let result = if self.closed {
                Err(RuntimeError::InvalidInput(
                    "the stream is closed; open a new one".to_owned(),
                ))
            } else {
                self.request(handle, level, request, &mut budget, &mut outcome)
            };
            results.push(match result {
                Ok(response) => StreamResult::Ok { response },
                Err(e) => StreamResult::Error {
                    error: HError::from(&e),
                },
            });
            // Between requests too: outside a transaction the connection goes back, and a
            // transaction's clock starts when it opens.
            self.settle();
        }
        self.deadline = None;
        (results, outcome)
    }

    /// Runs one `execute` request, as [`Session::pipeline`] would. Outside a transaction
    /// (and with no session PRAGMA set) the statement needs no connection of the stream's
    /// own: it runs as `/v1/db/query` runs one, a plain SELECT on a reader when the writer
    /// is busy, so a stream's reads never queue behind another stream's transaction. Over a
    /// WebSocket every statement comes this way, one request at a time. Blocking.
    pub fn execute_one(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        stmt: Stmt,
    ) -> (StreamResult, Outcome) {
        // A PRAGMA may set something for the stream: it goes the stream's way. (Stored SQL
        // is put in place by the caller; an `sql_id` left here goes the stream's way too.)
        let pragma =
            stmt.sql_id.is_some() || stmt.sql.as_deref().is_none_or(crate::handle::is_pragma);
        if self.lease.is_none() && self.session_pragmas.is_empty() && !self.closed && !pragma {
            match execute_alone(handle, level, &stmt) {
                Some(Ok((result, changed))) => {
                    let mut outcome = Outcome::default();
                    if changed {
                        outcome.schema_changes.extend(stmt.sql);
                    }
                    let response = StreamResponse::Execute { result };
                    return (StreamResult::Ok { response }, outcome);
                }
                Some(Err(e)) => {
                    let error = HError::from(&e);
                    return (StreamResult::Error { error }, Outcome::default());
                }
                // A transaction statement: the stream's own connection, below.
                None => {}
            }
        }
        let (mut results, outcome) =
            self.pipeline(handle, level, vec![StreamRequest::Execute { stmt }]);
        let result = results.pop().unwrap_or_else(|| StreamResult::Error {
            error: HError::from(&RuntimeError::Internal("no result".to_owned())),
        });
        (result, outcome)
    }

    /// Runs a batch and reports it as cursor entries. Blocking.
    pub fn cursor(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        batch: Batch,
    ) -> (Vec<CursorEntry>, Outcome) {
        let mut outcome = Outcome::default();
        let mut budget = ResultBudget::new(handle.limits().max_result_bytes);
        let mut entries = Vec::new();
        self.deadline = Some(Instant::now() + handle.limits().time_budget);
        let mut fatal = None;
        match self.batch(handle, level, batch, &mut budget, &mut outcome, &mut fatal) {
            Ok(result) => {
                for (step, (ok, err)) in result
                    .step_results
                    .into_iter()
                    .zip(result.step_errors)
                    .enumerate()
                {
                    let step = u32::try_from(step).unwrap_or(u32::MAX);
                    if let Some(r) = ok {
                        entries.push(CursorEntry::StepBegin { step, cols: r.cols });
                        entries.extend(r.rows.into_iter().map(|row| CursorEntry::Row { row }));
                        entries.push(CursorEntry::StepEnd {
                            affected_row_count: r.affected_row_count,
                            last_insert_rowid: r.last_insert_rowid,
                        });
                    } else if let Some(error) = err {
                        entries.push(CursorEntry::StepError { step, error });
                    }
                }
            }
            Err(e) => entries.push(CursorEntry::Error {
                error: HError::from(&e),
            }),
        }
        // The steps that ran are reported above; then why the batch stopped.
        if let Some(e) = fatal {
            entries.push(CursorEntry::Error {
                error: HError::from(&e),
            });
        }
        self.settle();
        self.deadline = None;
        (entries, outcome)
    }

    /// After a call: a connection outside a transaction goes back to the handle, so a stream
    /// holds one only while the tenant's transaction needs it.
    fn settle(&mut self) {
        match &self.lease {
            Some(lease) if lease.is_autocommit() => {
                self.lease = None;
                self.pin = None;
                self.transaction_started = None;
            }
            Some(_) if self.pin.is_none() => match Pin::take() {
                Some(pin) => {
                    self.pin = Some(pin);
                    self.transaction_started.get_or_insert_with(Instant::now);
                }
                None => {
                    // Every slot for held transactions is taken: roll back now (dropping the
                    // lease does) and end the stream, as the transaction time limit does.
                    tracing::warn!(
                        "a libSQL transaction was rolled back: too many streams hold a database"
                    );
                    self.close();
                }
            },
            Some(_) => {
                self.transaction_started.get_or_insert_with(Instant::now);
            }
            None => {
                self.pin = None;
                self.transaction_started = None;
            }
        }
    }

    /// Runs `f` on the stream's connection (leased now if the stream holds none), within
    /// the call's deadline, with the tenant's transaction statements allowed.
    fn run<T>(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        f: impl FnOnce(&Connection, &SandboxState) -> Result<T>,
    ) -> Result<T> {
        let fresh = self.lease.is_none();
        if fresh {
            self.lease = Some(handle.lease(level)?);
        }
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + handle.limits().time_budget);
        let lease = self
            .lease
            .as_mut()
            .ok_or_else(|| RuntimeError::Internal("no lease".to_owned()))?;
        let session = &mut self.session_pragmas;
        lease.run_until(deadline, level, true, |conn, sandbox, _| {
            if fresh && !session.is_empty() {
                // Marked first: whatever happens next, the lease resets them.
                sandbox.mark_session_pragmas();
                crate::handle::server_sql(conn, sandbox, session)?;
            }
            let out = f(conn, sandbox);
            if sandbox.session_pragmas_used() {
                *session = crate::handle::session_pragmas(conn, sandbox);
            }
            out
        })
    }

    /// Keeps `sql` under `sql_id` for later statements (`store_sql`), within the stream's
    /// and its tenant's limits.
    pub fn store_sql(&mut self, sql_id: i32, sql: String) -> Result<()> {
        let stored: usize = self.sqls.values().map(String::len).sum();
        if stored + sql.len() > MAX_STORED_SQL_BYTES {
            return Err(RuntimeError::InvalidInput(format!(
                "a stream stores at most {MAX_STORED_SQL_BYTES} bytes of SQL text; \
                 close some first"
            )));
        }
        if self.sqls.len() >= MAX_STORED_SQL && !self.sqls.contains_key(&sql_id) {
            return Err(RuntimeError::InvalidInput(format!(
                "a stream stores at most {MAX_STORED_SQL} SQL texts; close some first"
            )));
        }
        if self.sqls.contains_key(&sql_id) {
            return Err(RuntimeError::InvalidInput(format!(
                "sql_id {sql_id} is already in use"
            )));
        }
        self.budget.take(sql.len())?;
        self.sqls.insert(sql_id, sql);
        Ok(())
    }

    /// Whether a text is stored under `sql_id`.
    pub fn has_sql(&self, sql_id: i32) -> bool {
        self.sqls.contains_key(&sql_id)
    }

    /// Forgets the text stored under `sql_id`, if any (`close_sql`).
    pub fn close_sql(&mut self, sql_id: i32) {
        if let Some(sql) = self.sqls.remove(&sql_id) {
            self.budget.give_back(sql.len());
        }
    }

    /// Puts the texts this session stores in place of the `sql_id`s `request` names. Over
    /// a WebSocket, stored SQL belongs to the connection, not to one stream: the connection
    /// keeps it in a session of its own and resolves each request before its stream runs
    /// it. An id it does not know is left for the stream to refuse.
    pub fn inline_stored_sql(&self, request: &mut StreamRequest) {
        let lookup = |sql: &mut Option<String>, sql_id: &mut Option<i32>| {
            if sql.is_none()
                && let Some(text) = sql_id.and_then(|id| self.sqls.get(&id))
            {
                *sql = Some(text.clone());
                *sql_id = None;
            }
        };
        match request {
            StreamRequest::Execute { stmt } => lookup(&mut stmt.sql, &mut stmt.sql_id),
            StreamRequest::Batch { batch } => {
                for step in &mut batch.steps {
                    lookup(&mut step.stmt.sql, &mut step.stmt.sql_id);
                }
            }
            StreamRequest::Sequence { sql, sql_id } | StreamRequest::Describe { sql, sql_id } => {
                lookup(sql, sql_id);
            }
            _ => {}
        }
    }

    fn sql_text(&self, sql: Option<String>, sql_id: Option<i32>) -> Result<String> {
        match (sql, sql_id) {
            (Some(sql), None) => Ok(sql),
            (None, Some(id)) => self.sqls.get(&id).cloned().ok_or_else(|| {
                RuntimeError::InvalidInput(format!("no SQL text is stored under sql_id {id}"))
            }),
            (Some(_), Some(_)) => Err(RuntimeError::InvalidInput(
                "give either sql or sql_id, not both".to_owned(),
            )),
            (None, None) => Err(RuntimeError::InvalidInput("give sql or sql_id".to_owned())),
        }
    }

    fn request(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        request: StreamRequest,
        budget: &mut ResultBudget,
        outcome: &mut Outcome,
    ) -> Result<StreamResponse> {
        Ok(match request {
            StreamRequest::Close => {
                self.close();
                StreamResponse::Close
            }
            StreamRequest::Execute { stmt } => {
                let sql = self.sql_text(stmt.sql.clone(), stmt.sql_id)?;
                let result = self.run(handle, level, |conn, sandbox| {
                    execute(conn, sandbox, &sql, &stmt, budget)
                })?;
                if result.1 {
                    outcome.schema_changes.push(sql);
                }
                StreamResponse::Execute { result: result.0 }
            }
            StreamRequest::Batch { batch } => {
                let mut fatal = None;
                let result = self.batch(handle, level, batch, budget, outcome, &mut fatal)?;
                if let Some(e) = fatal {
                    return Err(e);
                }
                StreamResponse::Batch { result }
            }
            StreamRequest::Sequence { sql, sql_id } => {
                let sql = self.sql_text(sql, sql_id)?;
                let (changed, result) = self.run(handle, level, |conn, sandbox| {
                    Ok(sequence(conn, sandbox, &sql))
                })?;
                // Audited even when a later statement failed: what ran before it stays.
                if changed {
                    outcome.schema_changes.push(sql);
                }
                result?;
                StreamResponse::Sequence
            }
            StreamRequest::Describe { sql, sql_id } => {
                let sql = self.sql_text(sql, sql_id)?;
                StreamResponse::Describe {
                    result: self
                        .run(handle, level, |conn, sandbox| describe(conn, sandbox, &sql))?,
                }
            }
            StreamRequest::StoreSql { sql_id, sql } => {
                self.store_sql(sql_id, sql)?;
                StreamResponse::StoreSql
            }
            StreamRequest::CloseSql { sql_id } => {
                self.close_sql(sql_id);
                StreamResponse::CloseSql
            }
            StreamRequest::GetAutocommit => StreamResponse::GetAutocommit {
                is_autocommit: self.lease.as_ref().is_none_or(Lease::is_autocommit),
            },
        })
    }

    /// Runs a batch's steps. A failing step is recorded and the batch goes on (conditions
    /// decide); a failure that ends the whole batch (the result cap, the time budget) is
    /// put in `fatal`, with the steps that ran before it still in the result.
    fn batch(
        &mut self,
        handle: &Arc<TenantHandle>,
        level: AccessLevel,
        batch: Batch,
        budget: &mut ResultBudget,
        outcome: &mut Outcome,
        fatal: &mut Option<RuntimeError>,
    ) -> Result<BatchResult> {
        if batch.steps.len() > MAX_BATCH_STEPS {
            return Err(RuntimeError::InvalidInput(format!(
                "a batch holds at most {MAX_BATCH_STEPS} steps"
            )));
        }
        for (i, step) in batch.steps.iter().enumerate() {
            if let Some(cond) = &step.condition {
                check_cond(cond, i)?;
            }
        }
        // Stored SQL is looked up before the connection is borrowed.
        let texts = batch
            .steps
            .iter()
            .map(|s| self.sql_text(s.stmt.sql.clone(), s.stmt.sql_id))
            .collect::<Vec<_>>();
        self.run(handle, level, |conn, sandbox| {
            let n = batch.steps.len();
            let mut out = BatchResult {
                step_results: Vec::with_capacity(n),
                step_errors: Vec::with_capacity(n),
            };
            for (step, text) in batch.steps.iter().zip(texts) {
                let run = match &step.condition {
                    Some(cond) => eval_cond(cond, &out, conn),
                    None => true,
                };
                if !run {
                    out.step_results.push(None);
                    out.step_errors.push(None);
                    continue;
                }
                let result = text.and_then(|sql| {
                    execute(conn, sandbox, &sql, &step.stmt, budget).map(|(r, changed)| {
                        if changed {
                            outcome.schema_changes.push(sql);
                        }
                        r
                    })
                });
                match result {
                    Ok(r) => {
                        out.step_results.push(Some(r));
                        out.step_errors.push(None);
                    }
                    // Past the result cap or the time budget nothing more can run: stop.
                    Err(e @ (RuntimeError::ResultTooLarge | RuntimeError::Timeout)) => {
                        *fatal = Some(e);
                        return Ok(out);
                    }
                    Err(e) => {
                        out.step_results.push(None);
                        out.step_errors.push(Some(HError::from(&e)));
                    }
                }
            }
            Ok(out)
        })
    }
}

/// What a one-statement pipeline (`execute`, then perhaps `get_autocommit`, then `close`:
/// what stateless clients send for each query) answers, run now on the caller's thread if
/// that is sure to be quick. `None` when it did not run or was undone: run the pipeline the
/// usual way. See [`TenantHandle::execute_now`]; the statement runs with transaction
/// statements refused (a `BEGIN` in a closing pipeline is undone anyway, and goes the
/// usual way), and whatever it leaves open is rolled back, as `close` would.
pub fn execute_now(
    handle: &Arc<TenantHandle>,
    level: AccessLevel,
    stmt: &Stmt,
    budget: std::time::Duration,
) -> Option<Result<(StmtResult, bool)>> {
    let sql = stmt.sql.as_deref()?;
    handle
        .run_now(level, sql, budget, |conn, sandbox, limits| {
            execute_outside_stream(conn, sandbox, limits, sql, stmt)
        })?
        .transpose()
}

/// Runs a statement of a one-statement pipeline; `Ok(None)` if it is a transaction
/// statement, which needs a stream.
fn execute_outside_stream(
    conn: &Connection,
    sandbox: &SandboxState,
    limits: &ExecLimits,
    sql: &str,
    stmt: &Stmt,
) -> Result<Option<(StmtResult, bool)>> {
    sandbox.take_transaction_refusal();
    let mut results = ResultBudget::new(limits.max_result_bytes);
    match execute(conn, sandbox, sql, stmt, &mut results) {
        Err(RuntimeError::Forbidden(_)) if sandbox.take_transaction_refusal() => Ok(None),
        other => other.map(Some),
    }
}

/// [`execute_now`]'s counterpart on a blocking thread: the statement alone, in autocommit,
/// waiting for a connection as `/v1/db/query` does. `None` when it is a transaction
/// statement (refused here): run the pipeline the usual way.
pub fn execute_alone(
    handle: &Arc<TenantHandle>,
    level: AccessLevel,
    stmt: &Stmt,
) -> Option<Result<(StmtResult, bool)>> {
    let sql = stmt.sql.as_deref()?;
    handle
        .run_one(level, sql, |conn, sandbox, limits| {
            execute_outside_stream(conn, sandbox, limits, sql, stmt)
        })
        .transpose()
}

/// A condition may only look at steps before its own.
fn check_cond(cond: &BatchCond, step: usize) -> Result<()> {
    match cond {
        BatchCond::Ok { step: s } | BatchCond::Error { step: s } => {
            if usize::try_from(*s).is_ok_and(|s| s < step) {
                Ok(())
            } else {
                Err(RuntimeError::InvalidInput(format!(
                    "the condition of batch step {step} refers to step {s}, which does not come \
                     before it"
                )))
            }
        }
        BatchCond::Not { cond } => check_cond(cond, step),
        BatchCond::And { conds } | BatchCond::Or { conds } => {
            conds.iter().try_for_each(|c| check_cond(c, step))
        }
        BatchCond::IsAutocommit => Ok(()),
    }
}

/// As sqld evaluates conditions: `ok` is "the step ran and succeeded", and `error` is its
/// negation, so a skipped step counts as an error. Clients build their
/// `BEGIN … COMMIT / ROLLBACK` batches on that reading.
fn eval_cond(cond: &BatchCond, done: &BatchResult, conn: &Connection) -> bool {
    let ok = |s: &u32| {
        usize::try_from(*s)
            .ok()
            .and_then(|s| done.step_results.get(s))
            .is_some_and(Option::is_some)
    };
    match cond {
        BatchCond::Ok { step } => ok(step),
        BatchCond::Error { step } => !ok(step),
        BatchCond::Not { cond } => !eval_cond(cond, done, conn),
        BatchCond::And { conds } => conds.iter().all(|c| eval_cond(c, done, conn)),
        BatchCond::Or { conds } => conds.iter().any(|c| eval_cond(c, done, conn)),
        BatchCond::IsAutocommit => conn.is_autocommit(),
    }
}

/// Binds Hrana arguments: positional ones to `?1…?n` in order, named ones by their name
/// with or without its prefix (`:a`, `@a`, `$a`). A parameter given no value is an error,
/// as in sqld (`value for parameter … not found`).
fn bind_hrana(prepared: &mut rusqlite::Statement<'_>, stmt: &Stmt) -> Result<()> {
    let count = prepared.parameter_count();
    if stmt.args.len() > count {
        return Err(RuntimeError::InvalidInput(format!(
            "the statement has {count} parameter(s) but {} positional value(s) were given",
            stmt.args.len()
        )));
    }
    let bind_err =
        |e: rusqlite::Error| RuntimeError::InvalidInput(format!("cannot bind parameter: {e}"));
    for (i, v) in stmt.args.iter().enumerate() {
        prepared.raw_bind_parameter(i + 1, v).map_err(bind_err)?;
    }
    let mut bound = Vec::with_capacity(stmt.named_args.len());
    for arg in &stmt.named_args {
        let index = if arg.name.starts_with([':', '@', '$']) {
            prepared.parameter_index(&arg.name).map_err(bind_err)?
        } else {
            let mut found = None;
            for prefix in [':', '@', '$'] {
                found = prepared
                    .parameter_index(&format!("{prefix}{}", arg.name))
                    .map_err(bind_err)?;
                if found.is_some() {
                    break;
                }
            }
            found
        };
        let index = index.ok_or_else(|| {
            RuntimeError::InvalidInput(format!(
                "the statement has no parameter named {:?}",
                arg.name
            ))
        })?;
        prepared
            .raw_bind_parameter(index, &arg.value)
            .map_err(bind_err)?;
        bound.push(index);
    }
    // A parameter left without a value is an error, as the protocol says and sqld answers
    // (bound as NULL, it stored NULL rows without a word).
    for i in stmt.args.len() + 1..=count {
        if !bound.contains(&i) {
            let name = prepared
                .parameter_name(i)
                .map_or_else(|| format!("?{i}"), str::to_owned);
            return Err(RuntimeError::InvalidInput(format!(
                "value for parameter {name} not found"
            )));
        }
    }
    Ok(())
}

/// Runs one statement; answers its result and whether it changed the schema.
fn execute(
    conn: &Connection,
    sandbox: &SandboxState,
    sql: &str,
    stmt: &Stmt,
    budget: &mut ResultBudget,
) -> Result<(StmtResult, bool)> {
    let started = Instant::now();
    let sql = immediate_begin(sql, sandbox.level());
    let r: QueryResult = run_with(
        conn,
        sandbox,
        sql,
        |p| bind_hrana(p, stmt),
        stmt.want_rows.unwrap_or(true),
        budget,
        Value::hrana_weight,
    )?;
    let changed = r.schema_changed;
    let cols = r
        .columns
        .into_iter()
        .zip(r.decltypes)
        .map(|(name, decltype)| Col {
            name: Some(name),
            decltype,
        })
        .collect();
    Ok((
        StmtResult {
            cols,
            rows: r
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(HValue::from).collect())
                .collect(),
            affected_row_count: r.rows_affected,
            last_insert_rowid: r.last_insert_rowid,
            rows_read: r.rows_read,
            rows_written: r.rows_affected,
            query_duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        },
        changed,
    ))
}

/// A plain or deferred `BEGIN` from a caller who may write becomes `BEGIN IMMEDIATE`: the
/// write lock is taken up front, so a transaction that reads and then writes waits on the
/// busy timeout for another writer of the file (a migration, say) instead of failing with
/// `SQLITE_BUSY` at its first write. Within silo the stream already holds the tenant's one
/// writer connection, so this costs nothing. Read-only callers keep their deferred
/// (snapshot) transaction: they cannot take the write lock.
///
/// libSQL's own `BEGIN READONLY` / `BEGIN TRANSACTION READONLY` (what clients send for a
/// read transaction) is not SQLite syntax: it becomes a deferred `BEGIN`, a snapshot.
fn immediate_begin(sql: &str, level: AccessLevel) -> &str {
    // Nearly every statement is not a BEGIN: decided without allocating.
    let head = sql.trim_start().get(..5).unwrap_or("");
    if !head.eq_ignore_ascii_case("begin") {
        return sql;
    }
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["BEGIN", "READONLY"] | ["BEGIN", "TRANSACTION", "READONLY"] => "BEGIN DEFERRED",
        _ if level == AccessLevel::ReadOnly => sql,
        ["BEGIN"]
        | ["BEGIN", "TRANSACTION"]
        | ["BEGIN", "DEFERRED"]
        | ["BEGIN", "DEFERRED", "TRANSACTION"] => "BEGIN IMMEDIATE",
        _ => sql,
    }
}

/// Runs every statement of `sql` in order, discarding rows; stops at the first error.
/// Answers whether the schema changed.
fn sequence(conn: &Connection, sandbox: &SandboxState, sql: &str) -> (bool, Result<()>) {
    use rusqlite::fallible_iterator::FallibleIterator as _;
    let version = || -> Result<i64> {
        conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|e| map_error(e, sandbox))
    };
    let before = match version() {
        Ok(v) => v,
        Err(e) => return (false, Err(e)),
    };
    sandbox.take_denial();
    let run = || -> Result<()> {
        let mut batch = rusqlite::Batch::new(conn, sql);
        while let Some(mut stmt) = batch.next().map_err(|e| map_error(e, sandbox))? {
            let mut rows = stmt.raw_query();
            while rows.next().map_err(|e| map_error(e, sandbox))?.is_some() {}
        }
        Ok(())
    };
    let result = run();
    // Read even after a failure: statements before it may have changed the schema.
    let changed = version().is_ok_and(|after| after != before);
    (changed, result)
}

fn describe(conn: &Connection, sandbox: &SandboxState, sql: &str) -> Result<DescribeResult> {
    sandbox.take_denial();
    let stmt = conn.prepare(sql).map_err(|e| map_error(e, sandbox))?;
    let params = (1..=stmt.parameter_count())
        .map(|i| DescribeParam {
            name: stmt.parameter_name(i).map(str::to_owned),
        })
        .collect();
    let cols = stmt
        .columns()
        .map(|c| Col {
            name: Some(c.name().to_owned()),
            decltype: c.decl_type().map(str::to_owned),
        })
        .collect();
    Ok(DescribeResult {
        params,
        cols,
        is_explain: stmt.is_explain() != 0,
        is_readonly: stmt.readonly(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A session PRAGMA set on a libSQL stream holds for that stream, also on a connection
    /// it gets later (here: of a handle opened again, as after an eviction), and never
    /// stays on a connection once the stream's call is over.
    #[test]
    fn a_streams_session_pragmas_follow_it_and_are_reset_behind_it() {
        use crate::handle::{ExecLimits, TenantHandle, open_keyed};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let token = silo_crypto::DbToken::generate();
        drop(
            open_keyed(
                &path,
                &token,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap(),
        );
        let open = || {
            Arc::new(
                TenantHandle::open_local(
                    crate::TenantId::generate(),
                    &path,
                    &token,
                    ExecLimits::default(),
                )
                .unwrap(),
            )
        };
        let h = open();
        let req = |sql: &str| -> StreamRequest {
            serde_json::from_value(serde_json::json!({ "type": "execute", "stmt": { "sql": sql } }))
                .unwrap()
        };
        let foreign_keys = |h: &Arc<TenantHandle>| -> i64 {
            h.lease(AccessLevel::ReadWrite)
                .unwrap()
                .run(AccessLevel::ReadWrite, false, |conn, _, _| {
                    Ok(conn
                        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
                        .unwrap())
                })
                .unwrap()
        };
        let mut stream = Session::new(SqlBudget::default());
        let (results, _) = stream.pipeline(
            &h,
            AccessLevel::Schema,
            vec![req("PRAGMA foreign_keys = OFF")],
        );
        assert!(
            results.iter().all(|r| format!("{r:?}").starts_with("Ok")),
            "{results:?}"
        );
        assert_eq!(foreign_keys(&h), 1, "left behind on the writer");
        // The tenant's handle goes (evicted) and comes back with new connections.
        drop(h);
        let again = open();
        let (results, _) = stream.pipeline(
            &again,
            AccessLevel::Schema,
            vec![req("PRAGMA foreign_keys")],
        );
        assert!(
            format!("{results:?}").contains("Integer { value: 0 }"),
            "{results:?}"
        );
        assert_eq!(
            foreign_keys(&again),
            1,
            "a re-applied PRAGMA was left behind"
        );
    }

    #[test]
    fn values_are_tagged_as_the_spec_says() {
        let cases = [
            (HValue::Null, r#"{"type":"null"}"#),
            (
                HValue::Integer { value: i64::MAX },
                r#"{"type":"integer","value":"9223372036854775807"}"#,
            ),
            (
                HValue::Float { value: 1.5 },
                r#"{"type":"float","value":1.5}"#,
            ),
            (
                HValue::Text { value: "é".into() },
                r#"{"type":"text","value":"é"}"#,
            ),
            (
                HValue::Blob {
                    base64: vec![0, 1, 2, 255],
                },
                r#"{"type":"blob","base64":"AAEC/w"}"#,
            ),
        ];
        for (value, json) in cases {
            assert_eq!(String::from_utf8(value.to_json()).unwrap(), json);
            assert_eq!(serde_json::from_str::<HValue>(json).unwrap(), value);
        }
        // Padded base64 and integers as JSON numbers are read too.
        assert_eq!(
            serde_json::from_str::<HValue>(r#"{"type":"blob","base64":"AAEC/w=="}"#).unwrap(),
            HValue::Blob {
                base64: vec![0, 1, 2, 255]
            }
        );
        assert_eq!(
            serde_json::from_str::<HValue>(r#"{"type":"integer","value":-3}"#).unwrap(),
            HValue::Integer { value: -3 }
        );
        for bad in [
            r#"{"type":"integer","value":"9223372036854775808"}"#,
            r#"{"type":"integer","value":"1.5"}"#,
            r#"{"type":"blob","base64":"*"}"#,
            r#"{"type":"bool","value":true}"#,
        ] {
            assert!(serde_json::from_str::<HValue>(bad).is_err(), "{bad}");
        }
        assert_eq!(HValue::from(Value::Real(f64::INFINITY)), HValue::Null);
    }

    /// The tag-first reader and its buffered fallback read the same things, refuse the same
    /// things, and say why.
    #[test]
    fn tagged_objects_read_alike_wherever_the_tag_is() {
        let value = |json: &str| serde_json::from_str::<HValue>(json).map_err(|e| e.to_string());
        for json in [
            r#"{"type":"integer","value":"7"}"#,
            r#"{"value":"7","type":"integer"}"#,
            r#"{"type":"integer","extra":[1,{"a":2}],"value":7}"#,
            r#"{"extra":null,"value":7,"type":"integer"}"#,
        ] {
            assert_eq!(value(json), Ok(HValue::Integer { value: 7 }), "{json}");
        }
        // A variant without fields ignores any it is given, with the tag first or not.
        assert_eq!(value(r#"{"type":"null","value":1}"#), Ok(HValue::Null));
        assert_eq!(value(r#"{"value":1,"type":"null"}"#), Ok(HValue::Null));
        for (json, says) in [
            (r#"{"type":"bool","value":true}"#, "unknown variant `bool`"),
            (r#"{"value":true,"type":"bool"}"#, "unknown variant `bool`"),
            (r#"{"value":"7"}"#, "missing field `type`"),
            (r#"{}"#, "missing field `type`"),
            (r#"{"value":"7","type":3}"#, "\"type\" must be a string"),
            (r#"{"type":3}"#, "invalid type"),
            (r#"{"type":"integer"}"#, "missing field `value`"),
            (r#"{"type":"integer","value":null}"#, "invalid type: null"),
            (
                r#"{"type":"integer","value":"x"}"#,
                "\"x\" is not a 64-bit integer",
            ),
            (r#""integer""#, "an object with a \"type\" field"),
        ] {
            let err = value(json).expect_err(json);
            assert!(err.contains(says), "{json}: {err}");
        }

        // Requests and nested conditions, each with the tag first and last.
        let requests: Vec<StreamRequest> = serde_json::from_str(
            r#"[{"type":"execute","stmt":{"sql":"SELECT ?","args":[{"type":"null"}]}},
                {"stmt":{"sql":"SELECT 1"},"type":"execute"},
                {"type":"store_sql","sql_id":3,"sql":"SELECT 2"},
                {"sql_id":3,"type":"close_sql"},
                {"type":"batch","batch":{"steps":[{"stmt":{"sql":"SELECT 3"},
                  "condition":{"conds":[{"type":"ok","step":0},
                    {"cond":{"step":1,"type":"error"},"type":"not"}],"type":"and"}}]}},
                {"type":"get_autocommit"},{"type":"close","ignored":true}]"#,
        )
        .expect("requests");
        assert!(matches!(&requests[0], StreamRequest::Execute { stmt }
            if stmt.sql.as_deref() == Some("SELECT ?") && stmt.args == [HValue::Null]));
        assert!(matches!(&requests[1], StreamRequest::Execute { stmt }
            if stmt.sql.as_deref() == Some("SELECT 1")));
        assert!(
            matches!(&requests[2], StreamRequest::StoreSql { sql_id: 3, sql } if sql == "SELECT 2")
        );
        assert!(matches!(
            &requests[3],
            StreamRequest::CloseSql { sql_id: 3 }
        ));
        let StreamRequest::Batch { batch } = &requests[4] else {
            panic!("not a batch: {:?}", requests[4]);
        };
        let Some(BatchCond::And { conds }) = &batch.steps[0].condition else {
            panic!("not an and: {:?}", batch.steps[0].condition);
        };
        assert!(matches!(conds[0], BatchCond::Ok { step: 0 }));
        assert!(
            matches!(&conds[1], BatchCond::Not { cond } if matches!(**cond, BatchCond::Error { step: 1 }))
        );
        assert!(matches!(requests[5], StreamRequest::GetAutocommit));
        assert!(matches!(requests[6], StreamRequest::Close));
        let err = serde_json::from_str::<StreamRequest>(r#"{"type":"open_stream"}"#)
            .expect_err("unknown request")
            .to_string();
        assert!(
            err.contains("unknown variant `open_stream`, expected one of"),
            "{err}"
        );
    }

    #[test]
    fn writers_begin_immediately_and_readers_do_not() {
        for sql in [
            "BEGIN",
            "begin deferred;",
            " Begin Transaction ",
            "BEGIN DEFERRED TRANSACTION",
        ] {
            assert_eq!(
                immediate_begin(sql, AccessLevel::ReadWrite),
                "BEGIN IMMEDIATE",
                "{sql}"
            );
            assert_eq!(immediate_begin(sql, AccessLevel::ReadOnly), sql);
        }
        for sql in ["BEGIN READONLY", "begin transaction readonly"] {
            assert_eq!(
                immediate_begin(sql, AccessLevel::ReadOnly),
                "BEGIN DEFERRED"
            );
            assert_eq!(immediate_begin(sql, AccessLevel::Schema), "BEGIN DEFERRED");
        }
        for sql in [
            "BEGIN EXCLUSIVE",
            "BEGIN IMMEDIATE",
            "SELECT 'BEGIN'",
            "BEGIN; DROP TABLE t",
        ] {
            assert_eq!(immediate_begin(sql, AccessLevel::Schema), sql);
        }
    }

    fn cond(json: &str) -> BatchCond {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_skipped_step_is_neither_ok_nor_free_of_error() {
        let conn = Connection::open_in_memory().unwrap();
        let done = BatchResult {
            step_results: vec![
                Some(StmtResult {
                    cols: vec![],
                    rows: vec![],
                    affected_row_count: 0,
                    last_insert_rowid: None,
                    rows_read: 0,
                    rows_written: 0,
                    query_duration_ms: 0.0,
                }),
                None,
                None,
            ],
            step_errors: vec![
                None,
                Some(HError {
                    message: "x".into(),
                    code: "SQLITE_ERROR".into(),
                }),
                None,
            ],
        };
        let truth = |j: &str| eval_cond(&cond(j), &done, &conn);
        assert!(truth(r#"{"type":"ok","step":0}"#));
        assert!(!truth(r#"{"type":"error","step":0}"#));
        assert!(!truth(r#"{"type":"ok","step":1}"#));
        assert!(truth(r#"{"type":"error","step":1}"#));
        // Step 2 was skipped: not ok, and so "error".
        assert!(!truth(r#"{"type":"ok","step":2}"#));
        assert!(truth(r#"{"type":"error","step":2}"#));
        assert!(truth(
            r#"{"type":"and","conds":[{"type":"ok","step":0},{"type":"not","cond":{"type":"ok","step":2}}]}"#
        ));
        assert!(truth(
            r#"{"type":"or","conds":[{"type":"ok","step":1},{"type":"is_autocommit"}]}"#
        ));
        assert!(!truth(
            r#"{"type":"and","conds":[]}"#.replace("and", "or").as_str()
        ));
        assert!(check_cond(&cond(r#"{"type":"ok","step":3}"#), 3).is_err());
        assert!(
            check_cond(
                &cond(r#"{"type":"not","cond":{"type":"error","step":2}}"#),
                3
            )
            .is_ok()
        );
    }
}
