//! One tenant's open database: its own connection, keyed with its own DB token, sandboxed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use secrecy::ExposeSecret;
use serde::Serialize;
use silo_crypto::DbToken;

use crate::TenantId;
use crate::error::{Result, RuntimeError};
use crate::sandbox::{self, AccessLevel, SandboxLimits, SandboxState};
use crate::value::{Params, Value};

/// How statements on a handle may run. One value per store, copied into each handle.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    /// Wall-clock budget of one request (a statement, or a whole batch).
    pub time_budget: Duration,
    /// Largest result one request may return, counted as the JSON it becomes (roughly).
    pub max_result_bytes: usize,
    /// How long a writer waits for another writer of the same tenant before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    pub sandbox: SandboxLimits,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            time_budget: Duration::from_secs(5),
            max_result_bytes: 10 * 1024 * 1024,
            busy_timeout: Duration::from_secs(5),
            sandbox: SandboxLimits::default(),
        }
    }
}

/// The answer to one statement, in the shape of the API's query result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    /// `null` for statements that cannot write.
    pub last_insert_rowid: Option<i64>,
    /// The statement changed the schema (DDL): the control plane audits these.
    #[serde(skip)]
    pub schema_changed: bool,
}

/// One statement of a request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub sql: String,
    #[serde(default)]
    pub params: Params,
}

/// Opens an existing local tenant database file with its raw SQLCipher key and checks that
/// the key opens it. Used by the runtime for every handle and by the provisioner to create
/// and migrate new databases (with `OpenFlags::SQLITE_OPEN_CREATE`).
///
/// The key is given as a raw 256-bit key (`x'…'`), so opening costs no PBKDF2 (0.8 ms
/// instead of 153 ms, measured). WAL, `synchronous = FULL`: a committed write survives a
/// crash of the process or the machine.
pub fn open_keyed(path: &Path, token: &DbToken, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    {
        let pragma = token.sqlcipher_key_pragma();
        // Never pass this error on as it is: some rusqlite errors quote the SQL, and this
        // SQL holds the key.
        conn.execute_batch(pragma.expose_secret()).map_err(|_| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some("keying the database failed".to_owned()),
            )
        })?;
    }
    // The first read is what fails (SQLITE_NOTADB) when the key is wrong.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// A tenant's open database. Cheap to share (`Arc<TenantHandle>`) between the cache and the
/// requests using it; the connection closes when the last of them drops it.
pub struct TenantHandle {
    tenant: TenantId,
    /// A std mutex, not a tokio one: it is only ever locked on a blocking thread, for the
    /// duration of one request, and SQLite connections are not usable from two threads at
    /// once anyway. Requests of the same tenant queue here; other tenants never touch it.
    conn: Mutex<Connection>,
    sandbox: Arc<SandboxState>,
    limits: ExecLimits,
}

impl std::fmt::Debug for TenantHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHandle")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantHandle {
    /// Opens `path` with `token` and installs the sandbox. Blocking: call from a blocking
    /// thread.
    pub fn open_local(
        tenant: TenantId,
        path: &Path,
        token: &DbToken,
        limits: ExecLimits,
    ) -> Result<Self> {
        let mut conn = open_keyed(path, token, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| {
            match sandbox::error_code(&e) {
                Some(ErrorCode::NotADatabase) => RuntimeError::WrongKey,
                Some(ErrorCode::CannotOpen) => RuntimeError::Missing,
                _ => RuntimeError::Internal(format!("open tenant database: {e}")),
            }
        })?;
        conn.busy_timeout(limits.busy_timeout)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(64);
        // The sandbox starts at the lowest access level; so does the run-time guard.
        // Temporary tables and sort spills go to (unlinked) temporary files bounded by the
        // page cache, not to unbounded process memory.
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA temp_store = FILE;")
            .map_err(|e| RuntimeError::Internal(format!("connection settings: {e}")))?;
        let sandbox = sandbox::install(&mut conn, &limits.sandbox)
            .map_err(|e| RuntimeError::Internal(format!("install sandbox: {e}")))?;
        Ok(TenantHandle {
            tenant,
            conn: Mutex::new(conn),
            sandbox,
            limits,
        })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Runs one statement at `level`. Blocking.
    pub fn execute(&self, stmt: &Statement, level: AccessLevel) -> Result<QueryResult> {
        self.with_conn(level, |conn, sandbox, limits| {
            let mut budget = ResultBudget::new(limits.max_result_bytes);
            run(conn, sandbox, stmt, &mut budget)
        })
    }

    /// Runs statements in order. With `transaction`, all of them or none: the first failure
    /// rolls everything back. Without, each commits on its own and the first failure stops
    /// the batch (earlier statements stay committed). Blocking.
    pub fn batch(
        &self,
        statements: &[Statement],
        transaction: bool,
        level: AccessLevel,
    ) -> Result<Vec<QueryResult>> {
        self.with_conn(level, |conn, sandbox, limits| {
            let mut budget = ResultBudget::new(limits.max_result_bytes);
            if !transaction {
                return statements
                    .iter()
                    .enumerate()
                    .map(|(i, s)| run(conn, sandbox, s, &mut budget).map_err(|e| e.in_statement(i)))
                    .collect();
            }
            // IMMEDIATE: take the write lock up front, so a batch that reads then writes waits
            // on the busy timeout instead of failing half-way with SQLITE_BUSY. A read-only
            // caller cannot take the write lock (query_only), and needs only a snapshot.
            let begin = if level == AccessLevel::ReadOnly {
                "BEGIN DEFERRED"
            } else {
                "BEGIN IMMEDIATE"
            };
            server_sql(conn, sandbox, begin)?;
            let mut results = Vec::with_capacity(statements.len());
            for (i, s) in statements.iter().enumerate() {
                match run(conn, sandbox, s, &mut budget) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        rollback(conn, sandbox);
                        return Err(e.in_statement(i));
                    }
                }
            }
            if let Err(e) = server_sql(conn, sandbox, "COMMIT") {
                rollback(conn, sandbox);
                return Err(e);
            }
            Ok(results)
        })
    }

    fn with_conn<T>(
        &self,
        level: AccessLevel,
        f: impl FnOnce(&Connection, &SandboxState, &ExecLimits) -> Result<T>,
    ) -> Result<T> {
        // A poisoned lock means a thread panicked mid-request; the connection itself is still
        // consistent (SQLite rolls back what was not committed), so carry on with it.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if self.sandbox.level() != level {
            // The authorizer runs when a statement is compiled, not when a cached one is
            // reused: statements compiled for another level must not be reused at this one.
            conn.flush_prepared_statement_cache();
            // A second, run-time guard for read-only callers, independent of the authorizer.
            // Set first: the level changes only once its guard is in place.
            self.sandbox
                .as_server(|| {
                    conn.pragma_update(None, "query_only", level == AccessLevel::ReadOnly)
                })
                .map_err(|e| RuntimeError::Internal(format!("set query_only: {e}")))?;
            self.sandbox.set_level(level);
        }
        self.sandbox.start_budget(self.limits.time_budget);
        let out = f(&conn, &self.sandbox, &self.limits);
        self.sandbox.end_budget();
        // Nothing a request does may leave a transaction open on a shared handle.
        if !conn.is_autocommit() {
            rollback(&conn, &self.sandbox);
        }
        out
    }
}

fn server_sql(conn: &Connection, sandbox: &SandboxState, sql: &str) -> Result<()> {
    sandbox
        .as_server(|| conn.execute_batch(sql))
        .map_err(|e| map_error(e, sandbox))
}

fn rollback(conn: &Connection, sandbox: &SandboxState) {
    if let Err(e) = sandbox.as_server(|| conn.execute_batch("ROLLBACK")) {
        tracing::warn!(error = %e, "rollback failed");
    }
}

/// Tracks the size of a request's result against the cap.
struct ResultBudget {
    left: usize,
}

impl ResultBudget {
    fn new(max: usize) -> Self {
        ResultBudget { left: max }
    }

    fn take(&mut self, bytes: usize) -> Result<()> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(RuntimeError::ResultTooLarge)?;
        Ok(())
    }
}

fn run(
    conn: &Connection,
    sandbox: &SandboxState,
    stmt: &Statement,
    budget: &mut ResultBudget,
) -> Result<QueryResult> {
    if stmt.sql.trim().is_empty() {
        return Err(RuntimeError::InvalidInput("sql is empty".to_owned()));
    }
    // A refusal is recognised by the reason the authorizer records (SQLite reports some
    // refusals as SQLITE_AUTH and others as a plain SQLITE_ERROR), so start clean.
    sandbox.take_denial();
    let mut prepared = conn
        .prepare_cached(&stmt.sql)
        .map_err(|e| map_error(e, sandbox))?;
    bind(&mut prepared, &stmt.params)?;
    let readonly = prepared.readonly();
    // The schema cookie changes exactly when the schema does; read only around statements
    // that can write at all.
    let schema_version = |conn: &Connection| -> Result<i64> {
        conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|e| map_error(e, sandbox))
    };
    let version_before = if readonly { 0 } else { schema_version(conn)? };
    let columns: Vec<String> = prepared.column_names().map(str::to_owned).collect();
    let width = columns.len();
    let mut rows = Vec::new();
    {
        let mut cursor = prepared.raw_query();
        while let Some(row) = cursor.next().map_err(|e| map_error(e, sandbox))? {
            let mut out = Vec::with_capacity(width);
            for i in 0..width {
                let v = Value::from_ref(
                    row.get_ref(i)
                        .map_err(|e| RuntimeError::Internal(e.to_string()))?,
                );
                budget.take(v.weight())?;
                out.push(v);
            }
            rows.push(out);
        }
    }
    // SQLite reports rowid 0 when nothing was ever inserted on this connection: that is
    // "none", not a row.
    let (rows_affected, last_insert_rowid) = if readonly {
        (0, None)
    } else {
        (
            conn.changes(),
            Some(conn.last_insert_rowid()).filter(|&id| id != 0),
        )
    };
    let schema_changed = !readonly && schema_version(conn)? != version_before;
    Ok(QueryResult {
        columns,
        rows,
        rows_affected,
        last_insert_rowid,
        schema_changed,
    })
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &Params) -> Result<()> {
    let expected = stmt.parameter_count();
    let bind_err =
        |e: rusqlite::Error| RuntimeError::InvalidInput(format!("cannot bind parameter: {e}"));
    match params {
        Params::None if expected == 0 => Ok(()),
        Params::None => Err(RuntimeError::InvalidInput(format!(
            "the statement has {expected} parameter(s) but no params were given"
        ))),
        Params::Positional(values) => {
            if values.len() != expected {
                return Err(RuntimeError::InvalidInput(format!(
                    "the statement has {expected} parameter(s) but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v).map_err(bind_err)?;
            }
            Ok(())
        }
        Params::Named(map) => {
            let mut used = 0;
            for i in 1..=expected {
                let Some(name) = stmt.parameter_name(i).map(str::to_owned) else {
                    return Err(RuntimeError::InvalidInput(format!(
                        "parameter {i} is positional (?); give params as an array"
                    )));
                };
                let bare = name.trim_start_matches([':', '@', '$']);
                let value = map
                    .get(name.as_str())
                    .or_else(|| map.get(bare))
                    .ok_or_else(|| {
                        RuntimeError::InvalidInput(format!("no value given for parameter {name}"))
                    })?;
                stmt.raw_bind_parameter(i, value).map_err(bind_err)?;
                used += 1;
            }
            if map.len() > used {
                return Err(RuntimeError::InvalidInput(format!(
                    "{} named value(s) match no parameter of the statement",
                    map.len() - used
                )));
            }
            Ok(())
        }
    }
}

/// Sorts a SQLite error into the tenant's fault (4xx) or ours (5xx).
fn map_error(e: rusqlite::Error, sandbox: &SandboxState) -> RuntimeError {
    use rusqlite::Error as E;
    match &e {
        E::MultipleStatement => {
            return RuntimeError::InvalidInput(
                "one statement per query: send several to /v1/db/batch".to_owned(),
            );
        }
        E::InvalidParameterCount(..) | E::InvalidParameterName(_) => {
            return RuntimeError::InvalidInput(e.to_string());
        }
        _ => {}
    }
    if let Some(reason) = sandbox.take_denial() {
        return RuntimeError::Forbidden(reason);
    }
    match sandbox::error_code(&e) {
        Some(ErrorCode::AuthorizationForStatementDenied) => {
            RuntimeError::Forbidden("statement not allowed".to_owned())
        }
        Some(ErrorCode::OperationInterrupted) if sandbox.timed_out() => RuntimeError::Timeout,
        Some(
            ErrorCode::Unknown
            | ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch
            | ErrorCode::TooBig
            | ErrorCode::ParameterOutOfRange
            | ErrorCode::ReadOnly
            | ErrorCode::SchemaChanged
            | ErrorCode::ApiMisuse,
        ) => RuntimeError::Sql(e.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => RuntimeError::Busy,
        Some(ErrorCode::OutOfMemory | ErrorCode::DiskFull) => RuntimeError::Exhausted,
        _ => RuntimeError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fresh() -> (tempfile::TempDir, TenantHandle, DbToken) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let token = DbToken::generate();
        drop(
            open_keyed(
                &path,
                &token,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap(),
        );
        let limits = ExecLimits {
            time_budget: Duration::from_millis(200),
            max_result_bytes: 10_000,
            ..ExecLimits::default()
        };
        let h = TenantHandle::open_local(TenantId::generate(), &path, &token, limits).unwrap();
        (dir, h, token)
    }

    const ALL: AccessLevel = AccessLevel::Schema;

    fn s(sql: &str) -> Statement {
        Statement {
            sql: sql.to_owned(),
            params: Params::None,
        }
    }

    #[test]
    fn statements_bind_positional_and_named_params() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a INTEGER, b TEXT, c BLOB)"), ALL)
            .unwrap();
        let ins = h
            .execute(
                &Statement {
                    sql: "INSERT INTO t VALUES (?, ?, ?)".into(),
                    params: Params::Positional(vec![
                        Value::Integer(1),
                        Value::Text("x".into()),
                        Value::Blob(vec![1, 2]),
                    ]),
                },
                ALL,
            )
            .unwrap();
        assert_eq!((ins.rows_affected, ins.last_insert_rowid), (1, Some(1)));
        let named = h
            .execute(
                &Statement {
                    sql: "SELECT b, c FROM t WHERE a = :a".into(),
                    params: Params::Named([("a".to_owned(), Value::Integer(1))].into()),
                },
                ALL,
            )
            .unwrap();
        assert_eq!(named.columns, ["b", "c"]);
        assert_eq!(
            named.rows,
            vec![vec![Value::Text("x".into()), Value::Blob(vec![1, 2])]]
        );
        assert_eq!(named.last_insert_rowid, None);
        assert!(matches!(
            h.execute(&s("SELECT ?"), ALL),
            Err(RuntimeError::InvalidInput(_))
        ));
    }

    #[test]
    fn a_failing_batch_in_a_transaction_leaves_nothing_behind() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a INTEGER PRIMARY KEY)"), ALL)
            .unwrap();
        let err = h
            .batch(
                &[s("INSERT INTO t VALUES (1)"), s("INSERT INTO t VALUES (1)")],
                true,
                ALL,
            )
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::InStatement { index: 1, .. }),
            "{err:?}"
        );
        let count = h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        assert_eq!(count.rows[0][0], Value::Integer(0));
        // Without a transaction the first statement stays.
        h.batch(
            &[s("INSERT INTO t VALUES (1)"), s("INSERT INTO t VALUES (1)")],
            false,
            ALL,
        )
        .unwrap_err();
        let count = h.execute(&s("SELECT count(*) FROM t"), ALL).unwrap();
        assert_eq!(count.rows[0][0], Value::Integer(1));
    }

    #[test]
    fn overruns_are_reported_and_the_handle_keeps_working() {
        let (_d, h, _t) = fresh();
        let never_ends =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c";
        assert!(matches!(
            h.execute(&s(never_ends), ALL),
            Err(RuntimeError::Timeout)
        ));
        let big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
        assert!(matches!(
            h.execute(&s(big), ALL),
            Err(RuntimeError::ResultTooLarge)
        ));
        assert_eq!(
            h.execute(&s("SELECT 7"), ALL).unwrap().rows[0][0],
            Value::Integer(7)
        );
    }

    #[test]
    fn a_statement_cached_at_one_level_is_checked_again_at_another() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        let insert = s("INSERT INTO t VALUES (1)");
        h.execute(&insert, AccessLevel::ReadWrite).unwrap();
        // Same text, now from a read-only caller: refused, not served from the cache.
        let err = h.execute(&insert, AccessLevel::ReadOnly).unwrap_err();
        assert!(matches!(err, RuntimeError::Forbidden(_)), "{err:?}");
        let n = h
            .execute(&s("SELECT count(*) FROM t"), AccessLevel::ReadOnly)
            .unwrap();
        assert_eq!(n.rows[0][0], Value::Integer(1));
        h.execute(&insert, AccessLevel::ReadWrite).unwrap();
    }

    #[test]
    fn a_read_only_caller_can_run_a_transactional_batch() {
        let (_d, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        let out = h
            .batch(
                &[s("SELECT count(*) FROM t"), s("SELECT 1")],
                true,
                AccessLevel::ReadOnly,
            )
            .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn schema_changes_are_flagged_and_row_writes_are_not() {
        let (_d, h, _t) = fresh();
        assert!(
            h.execute(&s("CREATE TABLE t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("INSERT INTO t VALUES (1)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("SELECT * FROM t"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            h.execute(&s("CREATE INDEX i ON t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
        assert!(
            !h.execute(&s("CREATE TABLE IF NOT EXISTS t(a)"), ALL)
                .unwrap()
                .schema_changed
        );
    }

    #[test]
    fn a_wrong_key_does_not_open_the_file() {
        let (dir, _h, _t) = fresh();
        let err = TenantHandle::open_local(
            TenantId::generate(),
            &dir.path().join("t.db"),
            &DbToken::generate(),
            ExecLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RuntimeError::WrongKey), "{err:?}");
    }

    #[test]
    fn the_file_is_encrypted() {
        let (dir, h, _t) = fresh();
        h.execute(&s("CREATE TABLE t(a)"), ALL).unwrap();
        drop(h);
        let bytes = std::fs::read(dir.path().join("t.db")).unwrap();
        assert!(!bytes.starts_with(b"SQLite format 3"));
    }
}
